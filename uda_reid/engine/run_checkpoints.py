"""The training loop's checkpoints: what ``--resume`` starts from, and ``best.pt`` / ``last.pt`` /
the method's own files as each epoch ends (a part of :class:`~uda_reid.engine.loop.TrainingLoop`,
as ``epoch_labels`` is)."""

from __future__ import annotations

from typing import Any

import torch

from ..fileio import atomic_path
from ..models.checkpoints import (
    check_same_config,
    load_checkpoint,
    load_config_dict,
    save_checkpoint,
)
from .seeding import rng_state


class RunCheckpoints:
    """Reading and writing the run's checkpoints (uses the loop's config, method, run folder and ranks)."""

    def _resume_state(self) -> dict[str, Any] | None:
        """``last.pt``'s content when resuming a run that wrote one (a UDA run stopped in its source
        stage has none yet: it then starts its adaptation afresh)."""
        if not self.resume:
            return None
        path = self.run_dir / "last.pt"
        if not self.dist.broadcast_object(path.exists()):
            written = self.run_dir / "config.yaml"
            if written.exists():  # stopped before its first checkpoint: the settings must still be the same
                check_same_config(load_config_dict(written), self.config_as_written, written)
            self.log.truncate_after(-1)  # rows written before the first checkpoint are redone
            return None
        return load_checkpoint(path, expect_config=self.config_as_written)

    def _exported(self, network) -> dict[str, torch.Tensor]:
        """The plain ``ReidModel`` weights (what evaluate / --init read)."""
        return self.method.export_state_dict(network)

    def _checkpoint_marks(self) -> dict[str, Any]:
        stage = self.method.checkpoint_stage
        return {} if stage is None else {"stage": stage}

    def _save_artifacts(self, network) -> None:
        """The method's own files (``backbone.pth``), written atomically by rank 0."""
        if self.dist.is_main:
            for name, state in self.method.artifacts(network).items():
                with atomic_path(self.run_dir / name) as tmp:
                    torch.save(state, tmp)
        self.dist.barrier()

    def _save_best(self, network, epoch: int, best_map: float) -> None:
        """``best.pt``: the exported model only (it is never resumed from)."""
        if self.dist.is_main:
            model = self._exported(network)
            save_checkpoint(self.run_dir / "best.pt", self.config_as_written, epoch, model=model,
                            num_classes=_classifier_size(model), best_mAP=best_map, **self._checkpoint_marks())
        self.dist.barrier()  # nobody reads a checkpoint before it is complete

    def _save_last(self, network, optimizer, scheduler, epoch: int, best_map: float) -> None:
        """``last.pt``: the exported model and everything a resumed run needs to continue exactly.
        Rank 0 writes (every rank calls: the random states of all ranks are gathered)."""
        rng_states = self.dist.all_gather_object(rng_state(self.device))
        if self.dist.is_main:
            model = self._exported(network)
            trained = network.state_dict()
            save_checkpoint(
                self.run_dir / "last.pt",
                self.config_as_written,
                epoch,
                model=model,
                num_classes=_classifier_size(model),
                best_mAP=best_map,
                train_state={
                    # None: the trained model is the exported one (stored once)
                    "model": None if _same_tensors(model, trained) else trained,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "method": self.method.state_dict(),
                    "add_ons": {add_on.section: add_on.state_dict() for add_on in self.add_ons},
                    "rng": rng_states,  # one per rank, in rank order
                    "grad_scaler": self.grad_scaler.state_dict(),  # empty unless fp16
                    "resolved_eps": self.resolved_eps,  # clustering.eps auto: the value derived at the first clustering
                },
                **self._checkpoint_marks(),
            )
        self.dist.barrier()


def _classifier_size(state: dict[str, torch.Tensor]) -> int:
    weight = state.get("classifier.weight")
    return 0 if weight is None else int(weight.shape[0])


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] or torch.equal(a[k], b[k]) for k in a)
