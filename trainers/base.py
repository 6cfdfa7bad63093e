"""The trainer every network family shares: nnU-Net's trainer with our data, features, time budget and
validation; a family's trainer (``desam_trainer.py``, ``dapsam_trainer.py``) overrides only what differs.

What stays nnU-Net's: the plans and dataset handling, splits (``splits_final.json``), output folders,
the epoch loop (``run_training``), logging (``training_log_*.txt``, ``progress.png``), checkpoints (best /
latest / final, ``--c``), the step (AMP and gradient scaling on CUDA, clipping at 12), the poly schedule
and the final validation's export and metrics. What is shared here:

- network: built from the plans' family section (``DeSAMConfig.build_network``), as the predictor builds it;
  SAM weights from ``sam_checkpoint`` through the family's loader.
- data: fixed items (every tile of every slice, ``trainers/slices.py``); a batch draws foreground items and,
  at ``empty_slice_fraction`` (0.2), slices without foreground, because the predictor sees every slice.
- features: a frozen encoder's come from the embedding cache (``desam_nnu.cache``) when it pays for itself
  in the run (the plans' policy, ``features.py``); otherwise the encoder runs online, on batches with
  nnU-Net's augmentation (``augmentation.py``).
- schedule: nnU-Net's epochs of 250 iterations, or under ``time_budget`` (``time_budget.py``) epochs of 50
  until the budget ends; pseudo-validation at nnU-Net's ratio.

A family's trainer provides ``_forward`` (a batch -> loss, logits at the patch, labels), its loss and
optimiser, ``_set_trainable`` and, when it has prompts, its own final validation.
"""
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from desam_nnu.cache import CacheCorruptError, EmbeddingCache, feature_bytes_per_item, file_sha256
from desam_nnu.config import DeSAMConfig
from desam_nnu.errors import DeSAMInputError
from desam_nnu.frozen_encoder import (FrozenEncoder, FrozenEncoderError, filled_on_load, slim_on_save,
                                     write_frozen_encoder)
from desam_nnu.model import BACKBONES, CheckpointError, network_family
from desam_nnu.planners.plans import DeSAMPlansManager
from desam_nnu.rgb import to_network_input
from desam_nnu.trainers.augmentation import training_transforms
from desam_nnu.trainers.batches import _Batches
from desam_nnu.trainers.distributed import average_gradients, barrier, from_rank0, rank_share
from desam_nnu.trainers.features import FeatureChoice, choose_features
from desam_nnu.trainers.loss import one_hot_classes
from desam_nnu.trainers.slices import ItemIndex, build_item_index, load_case_patches
from desam_nnu.trainers.time_budget import TimeBudgetMixin

CACHE_LAYOUT_VERSION = 1
BUDGET_EPOCH_ITERATIONS = 50
BUDGET_MAX_EPOCHS = 10 ** 6
RANK_SEED_STEP = 7919  # added to the batch draws' seeds per DDP rank (rank 0: a single process's draws)
VAL_PER_TRAIN_ITERATION = 50 / 250  # nnU-Net's per-epoch pseudo-validation, relative to its training iterations
ENCODE_BATCH = 8
MAX_OPEN_CASES = 256


class SAMFamilyTrainer(TimeBudgetMixin, nnUNetTrainer):
    """The shared part (see the module docstring). ``family`` is the network family the plans must name."""

    family = ""
    recipe: Dict[str, object] = {}  # the family's training recipe, set over nnU-Net's and the shared defaults
    # iterations per epoch under a time budget: short epochs leave little of the budget unused at the end
    budget_epoch_iterations = BUDGET_EPOCH_ITERATIONS

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp and device.type != "cuda":  # nnU-Net's DDP puts rank r on cuda:r; gloo ranks keep the CPU
            self.device = device
        # nnU-Net resolves plans with its own PlansManager, which cannot find our classes by name
        self.plans_manager = DeSAMPlansManager(self.plans_manager.plans)
        self.configuration_manager = self.plans_manager.get_configuration(configuration)
        self.desam = self.configuration_manager.desam  # the plans' section for every family
        if self.family and self.desam.family != self.family:
            raise DeSAMInputError(f"{type(self).__name__} trains the {self.family} family but the plans are for "
                                  f"{self.desam.family}: desam_plan_and_preprocess --family {self.family}")
        self.num_epochs: Optional[int] = None  # resolved in initialize: 100, or unbounded under a time budget
        self.enable_deep_supervision = False
        self.save_every = 1  # --c resumes from the last finished epoch
        self.sam_checkpoint: Optional[str] = os.environ.get("DESAM_SAM_CHECKPOINT") or None
        self.cache_dtype = self.desam.cache.dtype
        self.train_encoder = False
        # True / False: the cache or online encoding, forced (--cache / --no-cache); None: the plans' policy
        # ('auto': the cache when it pays for itself in this run, see features.choose_features)
        self.use_cache: Optional[bool] = {"cache": True, "online": False}.get(self.desam.cache.default)
        # nnU-Net's transforms on online batches (a cached feature cannot be augmented)
        self.augment_online = True
        # None: resolved when training starts (nnU-Net's 250, or 50 under a time budget, so that little of the
        # budget is left unused at the end; validation nnU-Net's 1 per 5)
        self.num_iterations_per_epoch: Optional[int] = None
        self.num_val_iterations_per_epoch: Optional[int] = None
        self.empty_slice_fraction = 0.2
        self.seed = 12345
        self.items: Optional[ItemIndex] = None
        self.cache: Optional[EmbeddingCache] = None
        self._open_cases: Dict[str, object] = {}
        self.time_budget: Optional[float] = None  # seconds of training (final validation excluded), for fair CPU budgets
        self.frozen_encoder: Optional[FrozenEncoder] = None  # set when training starts: checkpoints leave it out
        for attr, value in self.recipe.items():
            setattr(self, attr, value)

    # ------------------------------------------------------------------ network
    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> torch.nn.Module:
        """The plans' network (family, backbone, sizes; random weights: trained ones come from nnU-Net's
        checkpoint), through the same call as the predictor's.

        ``num_output_channels`` is nnU-Net's segmentation heads (background included); the families have
        one sigmoid channel per foreground class instead, recorded in the plans.
        """
        # pretrained None: a backbone's packaged weights (medsam_lite's LiteMedSAM) are the starting point
        return DeSAMConfig.from_configuration(configuration_manager.configuration).build_network(pretrained=None)

    def _do_i_compile(self) -> bool:
        """Never: the wrapper renames every state-dict key to ``_orig_mod.*`` (SAM checkpoints load by key),
        and nnU-Net compiles ``forward``, which DeSAM's trainer never calls (it calls ``encode``/``decode``)."""
        if os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t"):
            self.print_to_log_file("INFO: torch.compile stays off: this trainer calls its network itself")
        return False

    @property
    def bare_network(self) -> torch.nn.Module:
        """``self.network`` without nnU-Net's DDP or torch.compile wrappers: the module whose state-dict keys
        are SAM's, into which SAM checkpoints load (nnU-Net's own checkpoints unwrap it the same way)."""
        net = self.network.module if isinstance(self.network, DDP) else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def _resolve_schedule(self) -> None:
        """Epoch length and count left unset: under a time budget the budget ends training and its
        learning-rate schedule (``time_budget.py``), and short epochs leave little of it unused at the end;
        pseudo-validation keeps nnU-Net's ratio (50 per 250 training iterations), so that it costs the same
        share of an epoch whatever the epoch's length."""
        budget = self.time_budget is not None
        if self.num_epochs is None:
            self.num_epochs = BUDGET_MAX_EPOCHS if budget else 100
        if self.num_iterations_per_epoch is None:
            self.num_iterations_per_epoch = self.budget_epoch_iterations if budget else 250
        if self.num_val_iterations_per_epoch is None:
            self.num_val_iterations_per_epoch = max(1, round(self.num_iterations_per_epoch * VAL_PER_TRAIN_ITERATION))

    def initialize(self) -> None:
        if self.was_initialized:
            raise RuntimeError(f"{type(self).__name__}.initialize called twice")
        self._resolve_schedule()
        self._check_sam_checkpoint()
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        ddp, self.is_ddp = self.is_ddp, False  # nnU-Net would wrap before the SAM weights and the trainable set
        try:
            super().initialize()
        finally:
            self.is_ddp = ddp
        if self.sam_checkpoint:
            try:
                network_family(self.desam.family).load_pretrained(self.sam_checkpoint, self.bare_network)
            except (CheckpointError, FileNotFoundError) as e:
                raise DeSAMInputError(str(e)) from e
        self._set_trainable()
        if self.train_encoder or not network_family(self.desam.family).cacheable_features:
            self.use_cache = False  # a trained encoder's features change every step
        if self.is_ddp:
            self._wrap_ddp()
        # the optimiser must see the final set of trainable parameters
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        trainable = sum(p.numel() for p in self.network.parameters() if p.requires_grad)
        self.print_to_log_file(f"{self.desam.family} on {self.desam.backbone} at {self.desam.image_size}px, "
                               f"{trainable / 1e6:.2f}M trainable parameters, {self._setup_summary()}features: "
                               f"{ {True: 'cache (' + self.cache_dtype + ')', False: 'online'}.get(self.use_cache, 'auto')}")

    def _set_trainable(self) -> None:
        """Which parameters train (the family's recipe)."""
        raise NotImplementedError

    def _wrap_ddp(self) -> None:
        """nnU-Net's DDP setup, after the SAM weights and the trainable set (which DDP fixes when it wraps): each
        rank's share of the plans' batch, and the wrapper (device ids on CUDA only: gloo ranks are on the CPU).
        No SyncBatchNorm: only frozen encoders (TinyViT) have BatchNorm. The trainers call the network's
        ``encode``/``decode``, never the wrapper's ``forward``, so its gradient hooks never fire and
        ``train_step`` averages the gradients itself (``distributed.average_gradients``)."""
        self._set_batch_size_and_oversample()
        cuda = self.device.type == "cuda"
        self.network = DDP(self.network, device_ids=[self.device.index or 0] if cuda else None)

    def _setup_summary(self) -> str:
        """What the log's setup line adds for this family (e.g. ``"prompts: mixed, "``)."""
        return ""

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        pass  # one output resolution; the loss is taken at the patch's

    def _check_sam_checkpoint(self) -> None:
        spec = BACKBONES[self.desam.backbone]
        # tiny has no pretrained weights (a demo); medsam_lite's come inside its package
        if self.sam_checkpoint is None and spec.sam_checkpoint is not None:
            raise DeSAMInputError(f"backbone {self.desam.backbone} needs SAM weights: pass --sam-checkpoint "
                                  f"sam_{self.desam.backbone}_*.pth or set DESAM_SAM_CHECKPOINT")
        if self.sam_checkpoint is not None and not os.path.isfile(self.sam_checkpoint):
            raise DeSAMInputError(f"{self.sam_checkpoint}: SAM checkpoint not found")

    def plot_network_architecture(self) -> None:
        pass  # nnU-Net's plot traces a U-Net with hiddenlayer; not meaningful for a ViT

    # ------------------------------------------------------------------ data
    def _index_items(self):
        """(dataset, training keys, validation keys), with ``self.items`` indexed over every case of the split."""
        tr_keys, val_keys = self.do_split()
        keys = sorted(set(tr_keys) | set(val_keys))
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys)
        self.items = build_item_index(dataset, keys, self.desam.patch_size[0])
        return dataset, tr_keys, val_keys

    def build_cache(self, num_parts: int = 1, part_id: int = 0) -> List[str]:
        """Fill the embedding cache with part ``part_id`` of ``num_parts`` of the cases (every ``num_parts``-th in
        sorted order, as ``desam_predict -num_parts`` splits), without training: processes or machines sharing
        the preprocessed folder fill one cache at once (cases are published whole, by rename), and training
        then finds it complete. Returns the cases of this part."""
        if self.train_encoder or not network_family(self.desam.family).cacheable_features:
            raise DeSAMInputError(f"--cache-only: {self.desam.family} with this trainer encodes online; there is no "
                                  "cache to build")
        if num_parts < 1 or not 0 <= part_id < num_parts:
            raise DeSAMInputError(f"-num_parts {num_parts} -part_id {part_id}: use a part_id from 0 to num_parts - 1")
        dataset, _, _ = self._index_items()
        self.cache = self._open_cache()
        part = sorted(self.items.cases)[part_id::num_parts]
        per_item = feature_bytes_per_item(self.desam.cache.feature_shapes, self.cache_dtype)
        built = self.cache.build(part, lambda case: self._encode_case(dataset, case),
                                 estimated_bytes=per_item * sum(len(self.items.items_of(c)) for c in part),
                                 desc=f"Caching encoder features, part {part_id + 1} of {num_parts}")
        self.print_to_log_file(f"Embedding cache part {part_id} of {num_parts}: {len(part)} cases ({built} encoded "
                               f"now) in {self.cache.folder}", also_print_to_console=True)
        return part

    def get_dataloaders(self):
        """Item index, the embedding cache (built or reused) and two in-process batch iterators."""
        # nnU-Net's data-augmentation setup is not used, but it records the mirror axes that the
        # checkpoint hands to the predictor's test-time mirroring: (0, 1) for 2D
        self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        dataset, tr_keys, val_keys = self._index_items()
        rank = RANK_SEED_STEP * self.local_rank  # each rank draws its own share of the batch
        rng_tr = np.random.default_rng(self.seed + 1000 * (self.fold if isinstance(self.fold, int) else 99) + rank)
        rng_val = np.random.default_rng(self.seed + 1 + rank)
        if self.use_cache is not False:
            self.cache = self._open_cache()
            if self.use_cache is None:
                choice = from_rank0(self._choose_features(dataset, tr_keys))  # measured: every rank takes rank 0's
                self.use_cache = choice.use_cache
                self.print_to_log_file(f"Features: {'cache' if self.use_cache else 'online'} ({choice.reason})",
                                       also_print_to_console=True)
        if self.use_cache:  # built once, each rank encoding its share, then read by all
            per_item = feature_bytes_per_item(self.desam.cache.feature_shapes, self.cache_dtype)
            share = rank_share(list(self.items.cases))
            self.cache.build(share, lambda case: self._encode_case(dataset, case),
                             estimated_bytes=per_item * sum(len(self.items.items_of(c)) for c in share))
            barrier()
        transforms = training_transforms(self) if self.augment_online and not self.use_cache else None
        return (_Batches(self, dataset, tr_keys, rng_tr, transforms), _Batches(self, dataset, val_keys, rng_val))

    def _choose_features(self, dataset, tr_keys: List[str]) -> FeatureChoice:
        """The plans' ``auto`` policy (``features.py``): the cache when complete or when it pays in this run."""
        missing = sum(len(self.items.items_of(c)) for c in self.items.cases if not self.cache.has(c))
        if not missing or self.time_budget is None:
            draws = self.num_epochs * (self.num_iterations_per_epoch + self.num_val_iterations_per_epoch) * self.batch_size
            return choose_features(missing, self.batch_size, draws=draws)
        encode_s, step_s = self._measure_feature_costs(dataset, tr_keys)
        return choose_features(missing, self.batch_size, budget_s=self.time_budget - self.budget_spent_s,
                               encode_s_per_item=encode_s, step_s=step_s)

    def _measure_feature_costs(self, dataset, tr_keys: List[str]):
        """(seconds to encode one slice, seconds of one training step on features), on one training batch
        on the budget's clock; the step's gradients are dropped, so the weights stay as they were."""
        batch = next(_Batches(self, dataset, tr_keys, np.random.default_rng(self.seed), online=True))
        self.network.eval()
        start = self._clock()
        features = self._encode(batch["images"].numpy())
        encode_s = (self._clock() - start) / len(batch["seg"])
        self.network.train()
        start = self._clock()
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            loss, _, _ = self._forward({**batch, "features": [f.float() for f in features], "images": None})
        loss.backward()
        step_s = self._clock() - start
        self.optimizer.zero_grad(set_to_none=True)
        return encode_s, step_s

    def _open_cache(self) -> EmbeddingCache:
        checkpoint_hash = file_sha256(self.sam_checkpoint) if self.sam_checkpoint else "random-init"
        key = dict(data_identifier=self.configuration_manager.data_identifier, backbone=self.desam.backbone,
                   image_size=self.desam.image_size, checkpoint_sha256=checkpoint_hash,
                   patch_size=list(self.desam.patch_size), layout=CACHE_LAYOUT_VERSION)
        if checkpoint_hash == "random-init":
            # a random encoder differs per run: key it by the weights actually in this network
            key["checkpoint_sha256"] = _state_hash(self.bare_network.image_encoder)
        return EmbeddingCache(join(self.preprocessed_dataset_folder_base, "desam_cache"), key, self.cache_dtype)

    def cached_case(self, dataset, case: str):
        """A case's cached features; a corrupt cache file is rebuilt (with a warning), never trained on."""
        if case in self._open_cases:
            return self._open_cases[case]
        try:
            cached = self.cache.read(case)
        except CacheCorruptError as e:
            self.print_to_log_file(f"WARNING: {e}; rebuilding this case's cache", also_print_to_console=True)
            self.cache.invalidate(case)
            was_training = self.network.training
            self.cache.write_case(case, *self._encode_case(dataset, case))
            self.network.train(was_training)
            cached = self.cache.read(case)
        if len(self._open_cases) >= MAX_OPEN_CASES:  # memory maps stay few, whatever the dataset size
            self._open_cases.pop(next(iter(self._open_cases)))
        self._open_cases[case] = cached
        return cached

    @torch.no_grad()
    def _encode(self, images: np.ndarray) -> List[torch.Tensor]:
        """Patches [n, C, p, p] (0..255) -> encoder features, in mini-batches (AMP on CUDA, as the steps)."""
        outs: List[List[torch.Tensor]] = []
        for i in range(0, len(images), ENCODE_BATCH):
            x = torch.from_numpy(images[i:i + ENCODE_BATCH]).to(self.device)
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                outs.append(self.bare_network.encode(to_network_input(x, self.desam.channel_to_rgb,
                                                                      self.desam.image_size)))
        return [torch.cat([o[level] for o in outs]) for level in range(len(outs[0]))]

    def _encode_case(self, dataset, case: str):
        positions = self.items.position[self.items.items_of(case)]
        patches = load_case_patches(dataset, case, positions, self.desam.patch_size[0])
        self.network.eval()
        features = [f.float().cpu().numpy() for f in self._encode(patches["images"])]
        return features, {"seg": patches["seg"], "position": positions.astype(np.int32)}

    # ------------------------------------------------------------------ steps
    def _forward(self, batch: Dict[str, object]):
        """A batch (``features`` or ``images``, ``seg``, ``generator``) -> (loss, logits [B, C, p, p] at the
        patch, seg [B, p, p]): the family's forward and loss."""
        raise NotImplementedError

    def train_step(self, batch: dict) -> dict:
        # nnU-Net's step (AMP + grad scaler on CUDA, clip at 12) around our forward: its own train_step calls
        # network(data) and its loss on deep-supervision targets, which DeSAM's prompted decode cannot go through
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"), self.step_part("forward and loss"):
            loss, _, _ = self._forward(batch)
        with self.step_part("backward and optimizer"):
            self._backward_and_step(loss)
        return {"loss": loss.detach().cpu().numpy()}

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            if self.is_ddp:
                average_gradients(list(self.network.parameters()))
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            if self.is_ddp:
                average_gradients(list(self.network.parameters()))
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()

    def validation_step(self, batch: dict) -> dict:
        """Pseudo-Dice per class (sigmoid >= 0.5) on validation items, as nnU-Net's green curve."""
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            loss, logits, seg = self._forward(batch)
        pred = (logits > 0).float()
        # nnU-Net's own counts; one sigmoid channel per class (multi-label), so the target is one-hot per class
        tp, fp, fn, _ = get_tp_fp_fn_tn(pred, one_hot_classes(seg, pred.shape[1]), axes=(0, 2, 3),
                                        mask=(seg >= 0).float()[:, None])
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp.cpu().numpy(), "fp_hard": fp.cpu().numpy(),
                "fn_hard": fn.cpu().numpy()}

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Predict the fold's validation cases as whole volumes, as ``desam_predict`` does (nnU-Net's 2D
        sliding window over every slice with the family's tile network, export to the original geometry),
        from the preprocessed cases, and score them into ``summary.json``. Families with prompts override
        this to store candidates for the configuration choice."""
        from desam_nnu.inference.predictor import export_case_atomically

        if self.local_rank != 0:  # under DDP, rank 0 validates every case
            return None
        dataset, val_keys, folder = self._validation_cases()
        predictor = self._validation_predictor()
        for key in tqdm(val_keys, desc="Validation"):
            data, _, _, properties = dataset.load_case(key)
            logits, _ = predictor.predict_case(torch.from_numpy(np.asarray(data)))
            export_case_atomically(logits, properties, self.configuration_manager, self.plans_manager,
                                   self.dataset_json, folder, key, save_probabilities)
        self._score_validation(folder)

    def _validation_cases(self) -> Tuple[Any, List[str], str]:
        """The network in eval mode, the fold's validation dataset and keys, and the (created) output folder."""
        self.network.eval()
        _, val_keys = self.do_split()
        folder = join(self.output_folder, "validation")
        maybe_mkdir_p(folder)
        return self.dataset_class(self.preprocessed_dataset_folder, val_keys), val_keys, folder

    def _validation_predictor(self, network: Optional[torch.nn.Module] = None):
        """A ``DeSAMPredictor`` over the tile ``network`` (default: the predictor's own wrap of this network), set
        up as ``desam_predict`` sets it up from a model folder. Mirroring only on CUDA: on a CPU it would
        quadruple the encoder work."""
        from desam_nnu.inference.predictor import DeSAMPredictor

        predictor = DeSAMPredictor(use_mirroring=self.device.type == "cuda", device=self.device, allow_tqdm=False)
        if network is None:
            network = predictor.wrap(self.bare_network, self.desam)
        predictor.manual_initialization(network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        return predictor

    def _score_validation(self, folder: str) -> dict:
        """nnU-Net's metrics of the exported validation cases against the preprocessed ground truth."""
        lm = self.label_manager
        metrics = compute_metrics_on_folder(join(self.preprocessed_dataset_folder_base, "gt_segmentations"), folder,
                                            join(folder, "summary.json"), self.plans_manager.image_reader_writer_class(),
                                            self.dataset_json["file_ending"],
                                            lm.foreground_regions if lm.has_regions else lm.foreground_labels,
                                            lm.ignore_label, chill=True, num_processes=1)
        self.print_to_log_file("Validation complete", also_print_to_console=True)
        self.print_to_log_file("Mean Validation Dice: ", metrics["foreground_mean"]["Dice"],
                               also_print_to_console=True)
        return metrics

    def training_options(self) -> dict:
        """What ``desam_options.json`` records of this run (families add their own)."""
        return {"family": self.desam.family, "cache_dtype": self.cache_dtype, "use_cache": self.use_cache,
                "augment_online": self.augment_online and not self.use_cache, "train_encoder": self.train_encoder,
                "sam_checkpoint": self.sam_checkpoint, "num_epochs": self.num_epochs,
                "num_iterations_per_epoch": self.num_iterations_per_epoch, "time_budget": self.time_budget}

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.local_rank != 0:  # rank 0 writes for all
            return
        with open(join(self.output_folder, "desam_options.json"), "w") as f:
            json.dump(self.training_options(), f, indent=2)
        if not self.train_encoder:  # a trained encoder's weights stay in the checkpoints
            self.frozen_encoder = write_frozen_encoder(self.bare_network, self.output_folder_base,
                                                       self._encoder_identity())

    # ------------------------------------------------------------------ checkpoints
    def _encoder_identity(self) -> Dict[str, str]:
        """What the frozen encoder is, for slim checkpoints' records and their error messages."""
        spec = BACKBONES[self.desam.backbone]
        if self.sam_checkpoint:
            source = {"sam_checkpoint": os.path.basename(self.sam_checkpoint),
                      "sam_checkpoint_sha256": file_sha256(self.sam_checkpoint)}
        elif spec.packaged_checkpoint is not None:
            source = {"weights": f"{spec.packaged_checkpoint_name} (packaged)"}
        else:
            source = {"weights": "random"}
        return {"backbone": self.desam.backbone, **source}

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, slim when the encoder is frozen (``desam_nnu.frozen_encoder``). nnU-Net takes the
        weights from ``state_dict()`` inside ``save_checkpoint``, with no seam, so they are narrowed around it."""
        if self.frozen_encoder is None:
            return super().save_checkpoint(filename)
        with slim_on_save(self.bare_network, self.frozen_encoder, self.output_folder_base):
            super().save_checkpoint(filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's (``--c``, ``--val``), taking slim checkpoints: their frozen encoder from the model folder."""
        if not self.was_initialized:
            self.initialize()
        with filled_on_load(self.bare_network, self.output_folder_base, str(filename_or_checkpoint)):
            try:
                super().load_checkpoint(filename_or_checkpoint)
            except FrozenEncoderError as e:
                raise DeSAMInputError(str(e)) from e


def _state_hash(module: torch.nn.Module) -> str:
    """A cheap fingerprint of a module's weights (sum and a few values per tensor)."""
    import hashlib
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        flat = t.detach().float().flatten()
        h.update(name.encode())
        h.update(np.asarray([flat.sum().item(), flat[:4].sum().item(), flat.numel()], np.float64).tobytes())
    return h.hexdigest()[:16]
