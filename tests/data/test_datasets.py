"""Dataset loaders on tiny copies of the real layouts: counts, relabelling, cameras, and bad input."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest
from layout_factory import write_images, write_market_style, write_msmt_lists

from uda_reid.data.datasets import DATASETS, canonical_name, ReidDataset, Sample, format_stats, load_dataset, resolve_data_root
from uda_reid.errors import ConfigError, DatasetLayoutError, UnknownNameError

# ---- file names in each real naming rule, with what each must become: (name, pid, camid) --------

MARKET_TRAIN = [
    "-1_c1s1_000401_03.jpg",  # junk: dropped
    "0000_c1s1_000000_01.jpg",  # distractor: not a training identity
    "0002_c1s1_000451_03.jpg",
    "0002_c3s1_000551_01.jpg",
    "0007_c2s1_000826_01.jpg",
    "0010_c6s4_002427_02.jpg",
]
MARKET_QUERY = ["0003_c1s1_001051_00.jpg", "0005_c4s2_004106_00.jpg"]
MARKET_GALLERY = [
    "-1_c1s1_000000_00.jpg",
    "0000_c3s1_081067_02.jpg",
    "0003_c2s1_001076_01.jpg",
    "0005_c6s2_004176_03.jpg",
]
MARKET_EXPECTED = {
    "train": [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c3s1_000551_01.jpg", 0, 2),
        ("0007_c2s1_000826_01.jpg", 1, 1),
        ("0010_c6s4_002427_02.jpg", 2, 5),
    ],
    "query": [("0003_c1s1_001051_00.jpg", 3, 0), ("0005_c4s2_004106_00.jpg", 5, 3)],
    "gallery": [
        ("0000_c3s1_081067_02.jpg", 0, 2),
        ("0003_c2s1_001076_01.jpg", 3, 1),
        ("0005_c6s2_004176_03.jpg", 5, 5),
    ],
}

DUKE_TRAIN = ["0005_c2_f0046985.jpg", "0005_c8_f0050122.jpg", "0012_c1_f0001234.jpg"]
DUKE_QUERY = ["0019_c3_f0002000.jpg"]
DUKE_GALLERY = ["0019_c4_f0003000.jpg", "0020_c7_f0004000.jpg"]
DUKE_EXPECTED = {
    "train": [("0005_c2_f0046985.jpg", 0, 1), ("0005_c8_f0050122.jpg", 0, 7), ("0012_c1_f0001234.jpg", 1, 0)],
    "query": [("0019_c3_f0002000.jpg", 19, 2)],
    "gallery": [("0019_c4_f0003000.jpg", 19, 3), ("0020_c7_f0004000.jpg", 20, 6)],
}

PERSONX_TRAIN = ["0001_c12_000010.jpg", "0001_c3_000001.jpg", "0004_c10_000002.jpg"]
PERSONX_QUERY = ["0100_c4_000003.jpg"]
PERSONX_GALLERY = ["0100_c8_000004.jpg", "0101_c11_000005.jpg"]
PERSONX_EXPECTED = {  # cameras 3, 4, 8, 10, 11, 12 -> 0..5
    "train": [("0001_c12_000010.jpg", 0, 5), ("0001_c3_000001.jpg", 0, 0), ("0004_c10_000002.jpg", 1, 3)],
    "query": [("0100_c4_000003.jpg", 100, 1)],
    "gallery": [("0100_c8_000004.jpg", 100, 2), ("0101_c11_000005.jpg", 101, 4)],
}

MSMT_LISTS = {
    "list_train.txt": [
        ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
        ("0000/0000_001_05_0303morning_0016_1.jpg", 0),
        ("0003/0003_000_15_0303noon_0100_0.jpg", 3),
    ],
    "list_val.txt": [("0001/0001_000_02_0303morning_0040_0.jpg", 1)],
    "list_query.txt": [("0000/0000_000_03_0303afternoon_0001_0.jpg", 0)],
    "list_gallery.txt": [
        ("0000/0000_001_04_0303afternoon_0002_0.jpg", 0),
        ("0002/0002_000_07_0304morning_0003_0.jpg", 2),
    ],
}
MSMT_EXPECTED = {  # train = list_train + list_val, raw ids {0, 1, 3} -> {0, 1, 2}
    "train": [
        ("0000_000_01_0303morning_0015_0.jpg", 0, 0),
        ("0000_001_05_0303morning_0016_1.jpg", 0, 4),
        ("0001_000_02_0303morning_0040_0.jpg", 1, 1),
        ("0003_000_15_0303noon_0100_0.jpg", 2, 14),
    ],
    "query": [("0000_000_03_0303afternoon_0001_0.jpg", 0, 2)],
    "gallery": [("0000_001_04_0303afternoon_0002_0.jpg", 0, 3), ("0002_000_07_0304morning_0003_0.jpg", 2, 6)],
}


def named(samples: list[Sample]) -> list[tuple[str, int, int]]:
    return [(Path(s.path).name, s.pid, s.camid) for s in samples]


def splits_of(dataset: ReidDataset) -> dict[str, list[tuple[str, int, int]]]:
    return {"train": named(dataset.train), "query": named(dataset.query), "gallery": named(dataset.gallery)}


def write_market(data_root: Path, folder_name: str = "Market-1501-v15.09.15") -> Path:
    return write_market_style(data_root / folder_name, MARKET_TRAIN, MARKET_QUERY, MARKET_GALLERY)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


# ---- each real layout --------------------------------------------------------------------------


def test_market1501_relabels_train_drops_junk_and_keeps_distractors_in_gallery(data_root: Path) -> None:
    folder = write_market(data_root)
    dataset = load_dataset("market1501", data_root)
    assert splits_of(dataset) == MARKET_EXPECTED
    assert dataset.root == folder
    assert "Market-1501-v15.09.15" in dataset.layout
    assert all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in dataset.gallery)


@pytest.mark.parametrize("folder_name", ["market1501", "Market-1501"])
def test_market1501_alternative_folder_names_are_found_and_reported(data_root: Path, folder_name: str) -> None:
    write_market(data_root, folder_name)
    dataset = load_dataset("market1501", data_root)
    assert splits_of(dataset) == MARKET_EXPECTED
    assert dataset.root == data_root / folder_name
    assert dataset.layout.startswith(f"{folder_name}/")


def test_dukemtmc_uses_eight_cameras(data_root: Path) -> None:
    write_market_style(data_root / "DukeMTMC-reID", DUKE_TRAIN, DUKE_QUERY, DUKE_GALLERY)
    dataset = load_dataset("dukemtmc", data_root)
    assert splits_of(dataset) == DUKE_EXPECTED
    assert dataset.num_cameras == 8


def test_personx_maps_two_digit_cameras_in_sorted_order(data_root: Path) -> None:
    write_market_style(data_root / "PersonX", PERSONX_TRAIN, PERSONX_QUERY, PERSONX_GALLERY)
    dataset = load_dataset("personx", data_root)
    assert splits_of(dataset) == PERSONX_EXPECTED


def test_cuhk03_reads_the_chosen_variant(data_root: Path) -> None:
    np_root = data_root / "cuhk03_np"
    write_market_style(np_root / "labeled", ["0001_c1_1.png", "0001_c2_2.png"], ["0700_c1_1.png"], ["0700_c2_1.png"])
    write_market_style(np_root / "detected", ["0003_c2_1.png"], ["0701_c1_1.png"], ["0701_c2_3.png"])
    labeled = load_dataset("cuhk03", data_root)
    detected = load_dataset("cuhk03", data_root, variant="detected")
    assert splits_of(labeled) == {
        "train": [("0001_c1_1.png", 0, 0), ("0001_c2_2.png", 0, 1)],
        "query": [("0700_c1_1.png", 700, 0)],
        "gallery": [("0700_c2_1.png", 700, 1)],
    }
    assert splits_of(detected)["train"] == [("0003_c2_1.png", 0, 1)]
    assert detected.root == np_root / "detected"
    assert detected.layout.startswith("cuhk03_np/detected/")


def test_cuhk03_official_hyphenated_folder_is_accepted(data_root: Path) -> None:
    write_market_style(data_root / "cuhk03-np" / "labeled", ["0001_c1_1.png"], ["0700_c1_1.png"], ["0700_c2_1.png"])
    assert load_dataset("cuhk03", data_root).root == data_root / "cuhk03-np" / "labeled"


@pytest.mark.parametrize(
    ("version", "train_folder", "test_folder"),
    [("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2"), ("MSMT17_V2", "train", "test")],
)
def test_msmt17_list_files_train_is_train_plus_val(
    data_root: Path, version: str, train_folder: str, test_folder: str
) -> None:
    folder = write_msmt_lists(data_root / version, MSMT_LISTS, train_folder, test_folder)
    dataset = load_dataset("msmt17", data_root)
    assert splits_of(dataset) == MSMT_EXPECTED
    assert dataset.root == folder
    assert "list files" in dataset.layout and version in dataset.layout
    assert Path(dataset.train[0].path) == folder / train_folder / MSMT_LISTS["list_train.txt"][0][0]


def test_msmt17_market_style_copy_keeps_person_zero_as_an_identity(data_root: Path) -> None:
    write_market_style(
        data_root / "MSMT17_V1",
        ["0000_c1_0000.jpg", "0000_c15_0001.jpg", "0004_c9_0002.jpg"],
        ["0000_c2_0000.jpg"],
        ["0000_c3_0001.jpg", "0007_c14_0002.jpg"],
    )
    dataset = load_dataset("msmt17", data_root)
    assert splits_of(dataset) == {
        "train": [("0000_c15_0001.jpg", 0, 14), ("0000_c1_0000.jpg", 0, 0), ("0004_c9_0002.jpg", 1, 8)],
        "query": [("0000_c2_0000.jpg", 0, 1)],
        "gallery": [("0000_c3_0001.jpg", 0, 2), ("0007_c14_0002.jpg", 7, 13)],
    }
    assert "Market-style" in dataset.layout


def test_folder_dataset_maps_camera_values_numerically_and_ignores_non_images(tmp_path: Path) -> None:
    cameras = tmp_path / "my_cameras"
    write_images(
        cameras,
        [
            "day1/cam_c2_0001.jpg",
            "day1/cam_c10_0002.png",
            "day2/cam_c02_0003.jpeg",  # same camera as c2
            "cam_c1_0004.bmp",
            "notes.txt",
            ".ipynb_checkpoints/cam_c99_0005.jpg",
            "._cam_c98_0006.jpg",
        ],
    )
    dataset = load_dataset("folder", tmp_path, path=cameras)
    assert named(dataset.train) == [
        ("cam_c1_0004.bmp", -1, 0),
        ("cam_c10_0002.png", -1, 2),
        ("cam_c2_0001.jpg", -1, 1),
        ("cam_c02_0003.jpeg", -1, 1),
    ]
    assert dataset.query == [] and dataset.gallery == []
    assert dataset.root == cameras
    assert dataset.num_train_ids == 0 and dataset.num_cameras == 3


def test_folder_default_camera_pattern_does_not_read_numbers_inside_names(tmp_path: Path) -> None:
    from uda_reid.data.datasets import format_stats
    from uda_reid.errors import DatasetLayoutError

    write_images(tmp_path, ["pic0001.jpg", "pic0002.jpg"])
    ordinary = load_dataset("folder", tmp_path)  # not camera 1 and camera 2: one camera, and the user is told
    assert {s.camid for s in ordinary.train} == {0} and len(ordinary.notes) == 1
    assert "no file name carries a camera id" in ordinary.notes[0] and "camera_regex" in ordinary.notes[0]
    assert "note: " in format_stats(ordinary)
    with pytest.raises(DatasetLayoutError, match="pic0001.jpg does not match camera_regex"):
        load_dataset("folder", tmp_path, camera_regex=r"_c(\d+)")  # a pattern the user gave: every name
    per_image = tmp_path / "per_image"
    write_images(per_image, [f"pic{i:04d}.jpg" for i in range(1, 7)])
    dataset = load_dataset("folder", tmp_path, path=per_image, camera_regex=r"pic(\d+)")
    assert dataset.num_cameras == 6 and "warning: 6 cameras for 6 train images" in format_stats(dataset)
    assert "warning" not in format_stats(load_dataset("folder", tmp_path, path=per_image, camera_regex="none"))


def test_a_folder_where_some_names_carry_cameras_and_some_do_not_is_an_error_naming_one(tmp_path: Path) -> None:
    from uda_reid.errors import DatasetLayoutError

    write_images(tmp_path, ["cam_c1_0001.jpg", "cam_c2_0002.jpg", "IMG_0003.jpg"])
    with pytest.raises(DatasetLayoutError, match=r"IMG_0003.jpg does not match camera_regex .* \(2 of 3 names do\)"):
        load_dataset("folder", tmp_path)


def test_hexadecimal_names_are_not_read_as_camera_ids(tmp_path: Path) -> None:
    write_images(tmp_path, ["c81234.jpg", "c8a1f.jpg", "3c4_9.jpg", "0f00.jpg"])
    dataset = load_dataset("folder", tmp_path)
    assert {s.camid for s in dataset.train} == {0} and len(dataset.notes) == 1


def test_a_folder_with_camera_ids_in_every_name_reads_them_without_a_note(tmp_path: Path) -> None:
    write_images(tmp_path, ["cam_c1_0001.jpg", "cam_c2_0002.jpg"])
    dataset = load_dataset("folder", tmp_path)
    assert dataset.num_cameras == 2 and dataset.notes == ()


def test_folder_dataset_defaults_to_root_and_accepts_text_cameras_or_none(tmp_path: Path) -> None:
    write_images(tmp_path, ["entranceB_1.jpg", "entranceA_2.jpg", "lobby_3.jpg"])
    by_name = load_dataset("folder", tmp_path, camera_regex=r"^([a-zA-Z]+)_")
    assert named(by_name.train) == [("entranceA_2.jpg", -1, 0), ("entranceB_1.jpg", -1, 1), ("lobby_3.jpg", -1, 2)]
    single = load_dataset("folder", tmp_path, camera_regex="none")
    assert {s.camid for s in single.train} == {0} and len(single.train) == 3


# ---- synthetic domains (generator replaced by a stand-in that writes a Market-style folder) ----


@pytest.mark.parametrize("domain", ["synthx", "synthm"])
def test_synthetic_domains_parse_the_generated_market_folder(
    data_root: Path, monkeypatch: pytest.MonkeyPatch, domain: str
) -> None:
    calls = []

    def fake_ensure_domain(root: Path, name: str) -> Path:
        calls.append((root, name))
        return write_market_style(root / "synthetic" / name, MARKET_TRAIN, MARKET_QUERY, MARKET_GALLERY)

    def fake_resolve_spec(name: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(folder=name.capitalize())

    monkeypatch.setitem(
        sys.modules, "uda_reid.data.synthetic",
        types.SimpleNamespace(ensure_domain=fake_ensure_domain, resolve_spec=fake_resolve_spec),
    )
    dataset = load_dataset(domain, data_root)
    assert calls == [(data_root, domain)]
    assert splits_of(dataset) == MARKET_EXPECTED
    assert dataset.name == domain and dataset.root == data_root / "synthetic" / domain
    assert "synthetic" in dataset.layout
    # A copy one level deeper (<root>/synthx/Synthx/), as the real datasets may be kept, is used instead.
    (data_root / domain / fake_resolve_spec(domain).folder).mkdir(parents=True)
    load_dataset(domain, data_root)
    assert calls[-1] == (data_root / domain, domain)


# ---- data root, registry, statistics -----------------------------------------------------------


def test_resolve_data_root_prefers_argument_then_environment_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("UDAREID_DATA", raising=False)
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "udareid" / "data"
    monkeypatch.setenv("UDAREID_DATA", str(tmp_path / "from_env"))
    assert resolve_data_root() == tmp_path / "from_env"
    assert resolve_data_root(tmp_path / "from_arg") == tmp_path / "from_arg"
    assert resolve_data_root("~/datasets") == tmp_path / "home" / "datasets"
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root("relative") == tmp_path / "relative"


def test_load_dataset_reads_the_environment_data_root(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_market(data_root)
    monkeypatch.setenv("UDAREID_DATA", str(data_root))
    assert splits_of(load_dataset("market1501")) == MARKET_EXPECTED


def test_registry_holds_every_documented_dataset() -> None:
    assert set(DATASETS.names()) == {
        "market1501", "dukemtmc", "msmt17", "personx", "cuhk03", "folder", "synthx", "synthm"
    }


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="--dataset") as error:
        load_dataset("market15", "/nonexistent")
    assert "market1501" in str(error.value) and "msmt17" in str(error.value) and "'market15'" in str(error.value)


def test_short_aliases_name_the_registered_datasets(data_root: Path) -> None:
    write_market(data_root)
    assert load_dataset("market", data_root).name == "market1501"
    assert canonical_name("Duke") == "dukemtmc" and canonical_name("msmt") == "msmt17"


def test_stats_and_table_count_images_ids_and_cameras(data_root: Path) -> None:
    write_market(data_root)
    dataset = load_dataset("market1501", data_root)
    assert dataset.stats() == {
        "train": {"images": 4, "ids": 3, "cameras": 4},
        "query": {"images": 2, "ids": 2, "cameras": 2},
        "gallery": {"images": 3, "ids": 3, "cameras": 3},  # the distractor id 0 counts as an id
    }
    assert dataset.num_train_ids == 3
    assert dataset.num_cameras == 6

    lines = format_stats(dataset).splitlines()
    table = lines[1:5]
    assert table[0].split() == ["split", "images", "ids", "cameras"]
    assert [row.split() for row in table[1:]] == [
        ["train", "4", "3", "4"],
        ["query", "2", "2", "2"],
        ["gallery", "3", "3", "3"],
    ]
    assert len({len(row) for row in table}) == 1  # right-aligned columns end at the same place
    assert lines[-1] == f"layout: {dataset.layout}"
    assert "market1501" in lines[0] and str(dataset.root) in lines[0]


def test_every_real_loader_returns_contiguous_train_ids_and_valid_cameras(data_root: Path) -> None:
    write_market(data_root)
    write_market_style(data_root / "DukeMTMC-reID", DUKE_TRAIN, DUKE_QUERY, DUKE_GALLERY)
    write_market_style(data_root / "PersonX", PERSONX_TRAIN, PERSONX_QUERY, PERSONX_GALLERY)
    write_market_style(data_root / "cuhk03_np" / "labeled", ["0001_c1_1.png"], ["0700_c1_1.png"], ["0700_c2_1.png"])
    write_msmt_lists(data_root / "MSMT17_V1", MSMT_LISTS)
    write_images(data_root / "cams", ["cam_c4_0001.jpg", "cam_c9_0002.jpg"])
    names_and_options = [("market1501", {}), ("dukemtmc", {}), ("personx", {}), ("cuhk03", {}), ("msmt17", {}),
                         ("folder", {"path": data_root / "cams"})]
    for name, options in names_and_options:
        dataset = load_dataset(name, data_root, **options)
        train_ids = sorted({s.pid for s in dataset.train if s.pid >= 0})
        assert train_ids == list(range(dataset.num_train_ids)), name
        samples = dataset.train + dataset.query + dataset.gallery
        assert all(0 <= s.camid < dataset.num_cameras for s in samples), name
        assert all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in samples), name
        assert load_dataset(name, data_root, **options) == dataset, name  # deterministic


# ---- bad input ---------------------------------------------------------------------------------


def test_missing_data_root_lists_folders_tried_and_expected_layout(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_root"
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("market1501", missing)
    message = str(error.value)
    assert f"data root {missing} does not exist" in message
    for tried in ["Market-1501-v15.09.15", "market1501", "Market-1501"]:
        assert str(missing / tried) in message
    assert "bounding_box_train/" in message and "0002_c1s1_000451_03.jpg" in message


def test_missing_dataset_folder_lists_folders_tried(data_root: Path) -> None:
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("msmt17", data_root)
    message = str(error.value)
    assert str(data_root / "MSMT17_V1") in message and str(data_root / "MSMT17_V2") in message
    assert "list_train.txt" in message and "bounding_box_train/" in message


def test_missing_split_folder_is_named_with_the_expected_layout(data_root: Path) -> None:
    folder = write_market(data_root)
    shutil.rmtree(folder / "query")
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("market1501", data_root)
    assert f"query split folder {folder / 'query'} is missing" in str(error.value)
    assert "bounding_box_test/" in str(error.value)


def test_file_name_not_matching_the_pattern_names_file_and_pattern(data_root: Path) -> None:
    folder = write_market(data_root)
    write_images(folder / "bounding_box_test", ["IMG_1234.jpg"])
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("market1501", data_root)
    assert str(folder / "bounding_box_test" / "IMG_1234.jpg") in str(error.value)
    assert r"([-\d]+)_c(\d)" in str(error.value)


def test_split_without_images_names_the_split_folder(data_root: Path) -> None:
    folder = write_market_style(data_root / "DukeMTMC-reID", DUKE_TRAIN, [], DUKE_GALLERY)
    with pytest.raises(DatasetLayoutError, match="has no usable images") as error:
        load_dataset("dukemtmc", data_root)
    assert str(folder / "query") in str(error.value)  # it holds only Thumbs.db


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [("0000/0000_000_01_0303morning_0015_0.jpg", "expected '<relative image path> <person id>'"),
     ("0000/0000_000_01_0303morning_0015_0.jpg zero", "expected '<relative image path> <person id>'"),
     ("0009/0009_000_01_0303morning_0099_0.jpg 9", "does not exist")],
)
def test_msmt17_bad_list_line_names_list_file_and_line(data_root: Path, bad_line: str, problem: str) -> None:
    folder = write_msmt_lists(data_root / "MSMT17_V1", MSMT_LISTS)
    list_file = folder / "list_val.txt"
    list_file.write_text(list_file.read_text() + bad_line + "\n")
    with pytest.raises(DatasetLayoutError, match=problem) as error:
        load_dataset("msmt17", data_root)
    assert f"{list_file} line 2" in str(error.value)
    if problem == "does not exist":
        assert str(folder / "train" / "0009" / "0009_000_01_0303morning_0099_0.jpg") in str(error.value)


def test_msmt17_missing_list_file_is_named(data_root: Path) -> None:
    folder = write_msmt_lists(data_root / "MSMT17_V1", MSMT_LISTS)
    (folder / "list_gallery.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="list_gallery.txt is missing"):
        load_dataset("msmt17", data_root)


def test_msmt17_folder_with_neither_layout_says_so(data_root: Path) -> None:
    write_images(data_root / "MSMT17_V2" / "images", ["0000_000_01_0303morning_0015_0.jpg"])
    with pytest.raises(DatasetLayoutError, match="neither MSMT17 list files nor bounding_box_train/") as error:
        load_dataset("msmt17", data_root)
    assert str(data_root / "MSMT17_V2") in str(error.value) and "list_query.txt" in str(error.value)


def test_msmt17_camera_outside_fifteen_is_rejected(data_root: Path) -> None:
    lists = dict(MSMT_LISTS, **{"list_query.txt": [("0000/0000_000_16_0303afternoon_0001_0.jpg", 0)]})
    write_msmt_lists(data_root / "MSMT17_V1", lists)
    with pytest.raises(DatasetLayoutError, match="camera 16, but MSMT17's cameras are 1..15"):
        load_dataset("msmt17", data_root)


@pytest.mark.parametrize(
    ("name", "folder_name", "train", "bad_file", "allowed"),
    [
        ("market1501", "Market-1501-v15.09.15", MARKET_TRAIN, "0002_c7s1_000451_03.jpg", "{1, 2, 3, 4, 5, 6}"),
        ("personx", "PersonX", PERSONX_TRAIN, "0001_c5_000001.jpg", "{3, 4, 8, 10, 11, 12}"),
    ],
)
def test_camera_outside_the_dataset_names_file_and_allowed_cameras(
    data_root: Path, name: str, folder_name: str, train: list[str], bad_file: str, allowed: str
) -> None:
    folder = write_market_style(data_root / folder_name, [*train, bad_file], ["0100_c3_000001.jpg"], ["0100_c4_1.jpg"])
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset(name, data_root)
    assert str(folder / "bounding_box_train" / bad_file) in str(error.value)
    assert allowed in str(error.value)


def test_folder_file_without_camera_names_file_and_regex(tmp_path: Path) -> None:
    write_images(tmp_path, ["cam_c1_0001.jpg", "snapshot.jpg"])
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("folder", tmp_path)
    assert str(tmp_path / "snapshot.jpg") in str(error.value) and "(1 of 2 names do)" in str(error.value)


def test_folder_missing_or_empty_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        load_dataset("folder", tmp_path, path=tmp_path / "absent")
    write_images(tmp_path / "empty", ["readme.txt"])
    with pytest.raises(DatasetLayoutError, match=f"{tmp_path / 'empty'} has no images"):
        load_dataset("folder", tmp_path, path=tmp_path / "empty")


@pytest.mark.parametrize("regex", ["c(", r"c\d+", r"(c)(\d+)"])
def test_folder_bad_camera_regex_is_an_option_error(tmp_path: Path, regex: str) -> None:
    write_images(tmp_path, ["cam_c1_0001.jpg"])
    with pytest.raises(ConfigError, match="camera_regex"):
        load_dataset("folder", tmp_path, camera_regex=regex)


def test_unknown_option_and_bad_variant_are_option_errors(data_root: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option.*variant.*takes: no options"):
        load_dataset("market1501", data_root, variant="labeled")
    with pytest.raises(ConfigError, match="takes: variant"):
        load_dataset("cuhk03", data_root, varaint="detected")
    with pytest.raises(ConfigError, match="'labeled' or 'detected', got 'label'"):
        load_dataset("cuhk03", data_root, variant="label")


# ---- the peers' nested layout: <data root>/<short name>/<dataset folder> ------------------------

NESTED = {  # dataset: (nested folder as SpCL / cluster-contrast / PPLR / torchreid keep it, writer, expected)
    "market1501": ("market1501/Market-1501-v15.09.15", "market", MARKET_EXPECTED),
    "dukemtmc": ("dukemtmc/DukeMTMC-reID", "duke", DUKE_EXPECTED),
    "personx": ("personx/PersonX", "personx", PERSONX_EXPECTED),
    "msmt17": ("msmt17/MSMT17_V1", "msmt", MSMT_EXPECTED),
}


def _write_nested(folder: Path, kind: str) -> None:
    if kind == "market":
        write_market_style(folder, MARKET_TRAIN, MARKET_QUERY, MARKET_GALLERY)
    elif kind == "duke":
        write_market_style(folder, DUKE_TRAIN, DUKE_QUERY, DUKE_GALLERY)
    elif kind == "personx":
        write_market_style(folder, PERSONX_TRAIN, PERSONX_QUERY, PERSONX_GALLERY)
    else:
        write_msmt_lists(folder, MSMT_LISTS)


@pytest.mark.parametrize("name", sorted(NESTED))
def test_each_dataset_is_found_one_level_deeper_under_its_short_name(data_root: Path, name: str) -> None:
    relative, kind, expected = NESTED[name]
    _write_nested(data_root / relative, kind)
    dataset = load_dataset(name, data_root)
    assert splits_of(dataset) == expected
    assert dataset.root == data_root / relative
    assert dataset.layout.startswith(f"{relative}/")  # says which form was found


def test_cuhk03_and_cluster_contrasts_duke_folder_are_found_nested(data_root: Path) -> None:
    write_market_style(data_root / "cuhk03" / "cuhk03_np" / "detected", ["0001_c1_1.png"], ["0700_c1_1.png"], ["0700_c2_1.png"])
    assert load_dataset("cuhk03", data_root, variant="detected").root == data_root / "cuhk03" / "cuhk03_np" / "detected"
    write_market_style(data_root / "dukemtmcreid" / "DukeMTMC-reID", DUKE_TRAIN, DUKE_QUERY, DUKE_GALLERY)
    assert load_dataset("duke", data_root).root == data_root / "dukemtmcreid" / "DukeMTMC-reID"


def test_a_short_name_folder_is_not_mistaken_for_the_dataset(data_root: Path) -> None:
    # <root>/market1501/ is also one of Market's flat names; holding the nested copy, it is a parent.
    _write_nested(data_root / "market1501" / "Market-1501-v15.09.15", "market")
    assert load_dataset("market", data_root).root == data_root / "market1501" / "Market-1501-v15.09.15"
    # A flat copy that holds the layout wins over a nested one.
    flat = write_market(data_root)
    assert load_dataset("market", data_root).root == flat


def test_missing_dataset_error_shows_the_flat_and_the_nested_form(data_root: Path) -> None:
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("msmt17", data_root)
    message = str(error.value)
    assert str(data_root / "MSMT17_V1") in message and str(data_root / "msmt17" / "MSMT17_V1") in message
    assert "one level deeper" in message and "msmt17/" in message
    # A nested folder of the right name without the layout is what the error is about.
    (data_root / "dukemtmc" / "DukeMTMC-reID").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="train split folder .*dukemtmc/DukeMTMC-reID/bounding_box_train is missing"):
        load_dataset("dukemtmc", data_root)
