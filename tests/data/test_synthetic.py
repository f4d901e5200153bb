"""The synthetic generator: Market layout, protocol, determinism, atomicity, and domain look."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uda_reid.data.synthetic import (
    DOMAINS,
    GENERATOR_VERSION,
    VIEWPOINTS,
    Identity,
    View,
    build_camera,
    ensure_domain,
    generate_domain,
    identity_of,
    read_manifest,
    render_person,
    resolve_spec,
    save_montage,
)
from uda_reid.data.synthetic import generate as generate_module
from uda_reid.errors import ConfigError, DatasetLayoutError, UnknownNameError

SMALL = {"num_train_ids": 4, "num_test_ids": 4, "images_per_id": (4, 6)}
MARKET_NAME = re.compile(r"^(-1|\d{4})_c([1-6])s1_(\d{6})_(\d{2})\.jpg$")
SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def _parse(folder: Path) -> dict[str, list[tuple[int, int, Path]]]:
    """(person id, camera, path) per split, parsed independently of the generator."""
    parsed: dict[str, list[tuple[int, int, Path]]] = {}
    for split in SPLITS:
        parsed[split] = []
        for path in sorted((folder / split).iterdir()):
            match = MARKET_NAME.match(path.name)
            assert match, f"{path.name} does not follow the Market-1501 naming"
            parsed[split].append((int(match.group(1)), int(match.group(2)), path))
    return parsed


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_domains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {name: generate_domain(root, name, progress=False, **SMALL) for name in ("synthx", "synthm")}


# ---- layout and protocol ------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["synthx", "synthm"])
def test_writes_market_layout_with_counts_matching_the_manifest(
    small_domains: dict[str, Path], domain: str
) -> None:
    folder = small_domains[domain]
    assert folder.name == DOMAINS[domain].folder
    assert sorted(p.name for p in folder.iterdir()) == sorted([*SPLITS, "manifest.json"])
    assert [p.name for p in folder.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []
    parsed = _parse(folder)
    manifest = read_manifest(folder)
    assert manifest is not None and manifest["generator_version"] == GENERATOR_VERSION
    counts = manifest["counts"]
    assert counts["train_images"] == len(parsed["bounding_box_train"])
    assert counts["query_images"] == len(parsed["query"])
    assert counts["gallery_images"] == len(parsed["bounding_box_test"])
    assert counts["gallery_distractors"] == sum(pid == 0 for pid, _, _ in parsed["bounding_box_test"]) > 0
    assert counts["gallery_junk"] == sum(pid == -1 for pid, _, _ in parsed["bounding_box_test"]) > 0
    with Image.open(parsed["query"][0][2]) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 128))
    per_id = defaultdict(int)
    for split in SPLITS:
        for pid, _, _ in parsed[split]:
            per_id[pid] += pid > 0
    assert all(4 <= per_id[pid] <= 6 for pid in range(1, 9))


def test_train_and_test_identities_are_disjoint_and_queries_have_cross_camera_matches(
    small_domains: dict[str, Path],
) -> None:
    parsed = _parse(small_domains["synthm"])
    train_ids = {pid for pid, _, _ in parsed["bounding_box_train"]}
    query_ids = {pid for pid, _, _ in parsed["query"]}
    gallery_ids = {pid for pid, _, _ in parsed["bounding_box_test"]} - {0, -1}
    assert train_ids == {1, 2, 3, 4} and query_ids == gallery_ids == {5, 6, 7, 8}
    assert all(pid > 0 for split in ("bounding_box_train", "query") for pid, _, _ in parsed[split])
    query_cameras = defaultdict(list)
    for pid, cam, _ in parsed["query"]:
        query_cameras[pid].append(cam)
        assert any(g_pid == pid and g_cam != cam for g_pid, g_cam, _ in parsed["bounding_box_test"])
    assert all(len(cams) == len(set(cams)) <= 2 for cams in query_cameras.values())


# ---- determinism ----------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    first = generate_domain(tmp_path / "a", "synthm", seed=7, progress=False, **SMALL)
    second = generate_domain(tmp_path / "b", "synthm", seed=7, progress=False, **SMALL)
    other = generate_domain(tmp_path / "c", "synthm", seed=8, progress=False, **SMALL)
    assert _files(first) == _files(second)
    first_images = {k: v for k, v in _files(first).items() if k.endswith(".jpg")}
    other_images = {k: v for k, v in _files(other).items() if k.endswith(".jpg")}
    shared = first_images.keys() & other_images.keys()
    assert first_images.keys() != other_images.keys() or all(
        first_images[k] != other_images[k] for k in shared
    )


def test_a_person_does_not_depend_on_the_number_of_people_but_on_the_domain() -> None:
    few, many = resolve_spec("synthx", num_train_ids=2), resolve_spec("synthx", num_train_ids=50)
    assert identity_of(few, 2) == identity_of(many, 2)
    same_seed_other_domain = resolve_spec("synthm", seed=few.seed)
    assert identity_of(few, 2) != identity_of(same_seed_other_domain, 2)


# ---- reuse, regeneration, atomicity ------------------------------------------------------------


def test_ensure_domain_reuses_a_matching_folder_and_regenerates_on_changed_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = ensure_domain(tmp_path, "synthx", progress=False, **SMALL)
    manifest_stat = (folder / "manifest.json").stat()

    def must_not_generate(*args: object, **kwargs: object) -> Path:
        raise AssertionError("ensure_domain regenerated a folder whose parameters match")

    with monkeypatch.context() as patch:
        patch.setattr(generate_module, "generate_domain", must_not_generate)
        assert ensure_domain(tmp_path, "synthx", progress=False, **SMALL) == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == manifest_stat.st_mtime_ns

    changed = ensure_domain(tmp_path, "synthx", progress=False, **{**SMALL, "num_test_ids": 2})
    assert changed == folder
    manifest = read_manifest(folder)
    assert manifest is not None and manifest["parameters"]["num_test_ids"] == 2
    assert {pid for pid, _, _ in _parse(folder)["query"]} == {5, 6}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SynthX"]  # no staging or retired copies left


def test_interrupted_generation_leaves_no_complete_looking_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_render = generate_module.render_planned

    def failing_render(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # like Ctrl-C half-way
        return real_render(*args, **kwargs)

    monkeypatch.setattr(generate_module, "render_planned", failing_render)
    with pytest.raises(KeyboardInterrupt):
        ensure_domain(tmp_path, "synthx", progress=False, **SMALL)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(generate_module, "render_planned", real_render)
    folder = ensure_domain(tmp_path, "synthx", progress=False, **SMALL)
    before = _files(folder)
    calls["n"] = 0
    monkeypatch.setattr(generate_module, "render_planned", failing_render)
    with pytest.raises(KeyboardInterrupt):  # a failed regeneration keeps the previous complete folder
        ensure_domain(tmp_path, "synthx", progress=False, **{**SMALL, "seed": 99})
    assert _files(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SynthX"]


def test_existing_folders_are_never_silently_replaced(tmp_path: Path) -> None:
    generate_domain(tmp_path, "synthx", progress=False, **SMALL)
    with pytest.raises(DatasetLayoutError, match="already exists; pass overwrite=True"):
        generate_domain(tmp_path, "synthx", progress=False, **SMALL)
    foreign = tmp_path / "SynthM"
    (foreign / "query").mkdir(parents=True)
    (foreign / "query" / "mine.jpg").write_bytes(b"user data")
    with pytest.raises(DatasetLayoutError, match="has no manifest.json"):
        ensure_domain(tmp_path, "synthm", progress=False, **SMALL)
    assert (foreign / "query" / "mine.jpg").read_bytes() == b"user data"


def test_bad_options_name_the_option() -> None:
    with pytest.raises(UnknownNameError, match="synthm, synthx"):
        resolve_spec("market")
    with pytest.raises(ConfigError, match="images_per_id"):
        resolve_spec("synthx", images_per_id=(2, 3))
    with pytest.raises(ConfigError, match="num_test_ids"):
        resolve_spec("synthx", num_test_ids=0)
    with pytest.raises(ConfigError, match="num_ids"):
        ensure_domain(Path("/nonexistent"), "synthx", num_ids=3)


# ---- what the images show --------------------------------------------------------------------


def _count_near(image: Image.Image, colour: tuple[int, int, int], tolerance: float = 40.0) -> int:
    pixels = np.asarray(image, dtype=np.float64)
    return int((np.abs(pixels - np.asarray(colour)).sum(axis=2) < tolerance).sum())


def test_logo_is_seen_only_from_the_front_and_a_backpack_mostly_from_the_back() -> None:
    spec = resolve_spec("synthx")
    camera = build_camera(np.random.default_rng(0), 1, spec.style, (128, 256))
    magenta, cyan = (255, 0, 255), (0, 255, 255)
    plain = dataclasses.replace(
        identity_of(spec, 1),
        upper_colour=(40, 40, 40),
        lower_colour=(40, 40, 40),
        hat_colour=None,
        shoe_colour=(40, 40, 40),
    )
    with_logo = dataclasses.replace(plain, upper_pattern="logo", upper_accent=magenta, accessory="none")
    with_backpack = dataclasses.replace(
        plain, upper_pattern="plain", accessory="backpack", accessory_colour=cyan
    )

    def render(person: Identity, viewpoint: str) -> Image.Image:
        view = View(
            viewpoint=viewpoint,
            walk_phase=0.0,
            stride=0.0,
            person_height=0.9,
            center_x=0.5,
            foot_y=0.98,
            rotation=0.0,
            brightness=1.0,
            light_gradient=(0.0, 0.0),
            background_offset=(0.0, 0.0),
            occluder=None,
        )
        return render_person(
            person, view, camera=camera, style=spec.style, rng=np.random.default_rng(1), size=(64, 128)
        )

    logo = {viewpoint: _count_near(render(with_logo, viewpoint), magenta) for viewpoint in VIEWPOINTS}
    assert logo["front"] > 20 and logo["back"] == logo["left"] == logo["right"] == 0
    pack = {viewpoint: _count_near(render(with_backpack, viewpoint), cyan) for viewpoint in VIEWPOINTS}
    assert (
        pack["back"] > max(pack["left"], pack["right"])
        and min(pack["left"], pack["right"]) > 2 * pack["front"] > 0
    )


def _person_images(folder: Path) -> list[tuple[int, int, np.ndarray]]:
    return [
        (pid, cam, _pixels(path)) for split in SPLITS for pid, cam, path in _parse(folder)[split] if pid > 0
    ]


def _camera_colour_spread(images: list[tuple[int, int, np.ndarray]]) -> float:
    """Spread across cameras of the mean log-chromaticity (log R/G, log B/G)."""
    per_camera = []
    for cam in sorted({cam for _, cam, _ in images}):
        mean = np.mean([img.reshape(-1, 3).mean(axis=0) for _, c, img in images if c == cam], axis=0)
        per_camera.append(np.log(mean[[0, 2]] / mean[1]))
    return float(np.std(per_camera, axis=0).sum())


def _border_high_frequency(images: list[tuple[int, int, np.ndarray]]) -> float:
    """Mean over images of the median |Laplacian| of the 8 leftmost and rightmost columns: the
    background beside the person (the median ignores the edges of limbs and occluders)."""
    energies = []
    for _, _, img in images:
        grey = img.mean(axis=2)
        border = np.concatenate([grey[:, :8], grey[:, -8:]], axis=1)
        laplacian = (
            4 * border[1:-1, 1:-1]
            - border[:-2, 1:-1]
            - border[2:, 1:-1]
            - border[1:-1, :-2]
            - border[1:-1, 2:]
        )
        energies.append(np.median(np.abs(laplacian)))
    return float(np.mean(energies))


def test_synthm_cameras_differ_in_colour_and_its_backgrounds_are_cluttered(
    small_domains: dict[str, Path],
) -> None:
    clean, street = _person_images(small_domains["synthx"]), _person_images(small_domains["synthm"])
    assert _camera_colour_spread(street) > 2.0 * _camera_colour_spread(clean)
    assert _border_high_frequency(street) > 3.0 * _border_high_frequency(clean)


@pytest.mark.parametrize("domain", ["synthx", "synthm"])
def test_images_of_one_person_are_closer_in_colour_than_images_of_different_people(
    small_domains: dict[str, Path], domain: str
) -> None:
    images = _person_images(small_domains[domain])
    histograms = []
    for _, _, img in images:
        quantised = (img[16:112, 8:56] // 64).astype(int)  # the centre, where the person is
        codes = quantised[..., 0] * 16 + quantised[..., 1] * 4 + quantised[..., 2]
        histograms.append(np.bincount(codes.ravel(), minlength=64) / codes.size)
    features = np.asarray(histograms)
    ids = np.asarray([pid for pid, _, _ in images])
    distances = np.abs(features[:, None] - features[None]).sum(axis=2)
    same = (ids[:, None] == ids[None]) & ~np.eye(len(ids), dtype=bool)
    assert distances[same].mean() < 0.85 * distances[ids[:, None] != ids[None]].mean()


def test_montage_rows_are_identities_with_their_images_pasted_unchanged(
    small_domains: dict[str, Path], tmp_path: Path
) -> None:
    folder = small_domains["synthx"]
    out = save_montage(folder, tmp_path / "montage.png", n=2, images_per_row=3)
    with Image.open(out) as sheet:
        montage = np.asarray(sheet.convert("RGB"))
    first_train = min((folder / "bounding_box_train").glob("0001_*.jpg"))  # row 0 = id 0001, camera order
    label_height, gap = 14, 2
    top_left = montage[label_height + gap : label_height + gap + 128, gap : gap + 64]
    np.testing.assert_array_equal(top_left, _pixels(first_train).astype(np.uint8))
    assert montage.shape == (label_height + 2 * (128 + gap) + gap, 3 * (64 + gap) + gap, 3)
    with pytest.raises(DatasetLayoutError, match="neither a bounding_box_train/ folder nor .jpg"):
        save_montage(tmp_path, tmp_path / "empty.png")
