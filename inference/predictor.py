"""DeSAMPredictor: nnU-Net's predictor with DeSAM as the network, whole 3D volumes in and out.

What stays nnU-Net's: preprocessing with the plans (``DeSAMPreprocessor.run_case``), the 2D sliding
window over every slice of the transposed volume (3D over T-slice patches for MaskSAM's ``masksam_3d``;
``predict_sliding_window_return_logits``: steps, Gaussian weights, padding, mirroring), fold ensembling
(``predict_logits_from_preprocessed_data``), and the export back to the original geometry
(``export_prediction_from_logits``: resampling, un-cropping, transpose, the original affine and direction).
What is DeSAM's is the network call (:class:`~desam_nnu.inference.prompted.PromptedDeSAM`) and how its outputs
become labels (``DeSAMPlansManager.get_label_manager``).

Two methods are ours instead of nnU-Net's, for reasons nnU-Net's cannot be subclassed around:
``initialize_from_trained_model_folder`` (nnU-Net finds trainer classes only inside nnunetv2 and
reads plans with its own PlansManager; inference must not import trainers) and
:meth:`predict_folder` instead of ``predict_from_files`` (there a bad case kills the worker pool
and every other case with it, and exports are written in place, so an interrupt leaves truncated
files). :meth:`predict_folder` checks each case first, predicts the others when one fails, writes
every output under a temporary name and renames it, and can skip finished cases.
"""
import copy
import glob
import os
import re
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from typing import Callable, Collection, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.postprocessing.remove_connected_components import load_postprocess_save
from nnunetv2.utilities.helpers import empty_cache
from tqdm import tqdm

from desam_nnu.allocator import retain_freed_memory
from desam_nnu.atomic import atomic_write_json, pid_alive
from desam_nnu.config import DeSAMConfig
from desam_nnu.errors import DeSAMInputError
from desam_nnu.frozen_encoder import FrozenEncoderError, expand_weights
from desam_nnu.inference.configuration import (InferenceConfiguration, read_configuration, serving_defaults,
                                              trained_predict_modes)
from desam_nnu.inference.inputs import InputCases, collect_cases
from desam_nnu.inference.model_folder import FoldSpec, resolve_folds
from desam_nnu.inference.prompt_free import MixtureTiles, PromptFreeTiles
from desam_nnu.inference.onnx_encoder import OnnxEncoder
from desam_nnu.inference.prompted import DeSAMTiles, GridStats, PromptedDeSAM, PromptSettings, TileNetwork
from desam_nnu.inference.user_prompts import (CasePrompts, UserPromptedBoxes, UserPromptedDeSAM, read_prompts,
                                              slice_prompts)
from desam_nnu.inference.tiles import (bf16_encoder_dtype, memory_cap, per_call_limit, sliding_window_batched,
                                       tile_working_bytes, tiles_per_call)
from desam_nnu.model import DeSAM
from desam_nnu.planners.plans import DeSAMPlansManager

PARTIAL = re.compile(r"^\.(?P<case>.+)\.partial-(?P<pid>\d+)")


@dataclass
class PredictionReport:
    """What a run did: cases written, cases skipped as already done, and failures (case -> one line)."""

    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failures: Dict[str, str] = field(default_factory=dict)
    previews: List[str] = field(default_factory=list)
    all_background: List[str] = field(default_factory=list)  # grid mode kept no prompt on any of their tiles


def export_case_atomically(logits: torch.Tensor, properties: dict, configuration_manager, plans_manager,
                           dataset_json: dict, output_folder: str, case: str, save_probabilities: bool,
                           postprocessing: Optional[Tuple[list, list]] = None) -> str:
    """nnU-Net's export under a temporary name, then renamed: an interrupt never leaves a truncated file.

    ``postprocessing`` is nnU-Net's ``(pp_fns, pp_fn_kwargs)``, applied to the exported label map with
    its own ``load_postprocess_save`` (probabilities stay as predicted, as in nnU-Net). The label map is
    renamed last, so its presence means the case (and its .npz/.pkl) is complete.
    """
    ending = dataset_json["file_ending"]
    tmp = join(output_folder, f".{case}.partial-{os.getpid()}")
    try:
        export_prediction_from_logits(logits, properties, configuration_manager, plans_manager, dataset_json, tmp,
                                      save_probabilities)
        if postprocessing is not None and postprocessing[0]:
            load_postprocess_save(tmp + ending, tmp + ending, plans_manager.image_reader_writer_class(),
                                  *postprocessing)
        if save_probabilities:
            for suffix in (".npz", ".pkl"):
                os.replace(tmp + suffix, join(output_folder, case + suffix))
        os.replace(tmp + ending, join(output_folder, case + ending))
    finally:
        for leftover in glob.glob(glob.escape(tmp) + "*"):
            os.remove(leftover)
    return join(output_folder, case + ending)


def remove_partials(folder: str, cases: Optional[Collection[str]] = None) -> None:
    """Remove the temporary outputs of processes that no longer run (killed runs, terminated workers).

    With ``cases``, only theirs: other parts of a split prediction (``-num_parts``) may be writing into
    the same folder from other machines, whose process ids mean nothing here."""
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = PARTIAL.match(name)
        if m and (cases is None or m.group("case") in cases) and not pid_alive(int(m.group("pid"))):
            os.remove(join(folder, name))


def _preprocess(preprocessor, files: List[str], plans_manager, configuration_manager, dataset_json: dict):
    data, _, properties = preprocessor.run_case(files, None, plans_manager, configuration_manager, dataset_json)
    return data, properties


class _Now:
    """A pool of zero workers: ``apply_async`` runs the job when its result is asked for."""

    def __init__(self, fn: Callable, args: tuple) -> None:
        self.fn, self.args = fn, args

    def get(self):
        return self.fn(*self.args)


class _Workers:
    """``n`` worker processes, or in-process jobs when ``n`` is 0; always terminated.

    Spawned, as nnU-Net's export pool: a forked child deadlocks in its first torch op once the
    parent's OpenMP threads exist (seen here with --save-probabilities). A multiprocessing Pool, not
    concurrent.futures: on an interrupt ``terminate`` stops running jobs, an executor waits for them."""

    def __init__(self, n: int) -> None:
        self.pool = get_context("spawn").Pool(n) if n > 0 else None

    def submit(self, fn: Callable, *args):
        return self.pool.apply_async(fn, args) if self.pool is not None else _Now(fn, args)

    def __enter__(self) -> "_Workers":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _same_encoder(parameters: List[dict]) -> bool:
    """More than one fold, and all with the same image encoder weights (the encoder was frozen)."""
    keys = [k for k in parameters[0] if k.startswith("image_encoder.")]
    return len(parameters) > 1 and all(keys == [k for k in p if k.startswith("image_encoder.")] and
                                       all(parameters[0][k] is p[k] or torch.equal(parameters[0][k], p[k])
                                           for k in keys)
                                       for p in parameters[1:])


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class DeSAMPredictor(nnUNetPredictor):
    """nnUNetPredictor for DeSAM models.

    Prompts and postprocessing come from the configuration ``desam_find_best_configuration`` chose
    (``desam_inference.json`` in the model folder) or, without one, from the plans' defaults in a mode
    the folds were trained for; ``prompt_overrides`` (mode, grid_points_per_side, iou_threshold,
    top_k; None = not given) win over either. ``configuration_note`` says in one line which applied.

    The network gets many tiles per call (``inference/tiles.py``): ``tiles_per_call`` sets how many, else
    as many as fit in ``tile_memory_cap`` bytes (default: a share of the device's free memory). ``bf16`` runs
    DeSAM's image encoder under bfloat16 autocast on a CPU with bf16 arithmetic (1.7x faster box mode on
    hippocampus, mean Dice -0.0025: not the default; BENCHMARKS, prediction options). ``onnx`` (the default) runs
    DeSAM's float32 encoder in ONNX Runtime on a CPU where no later fold replaces its weights: the same arithmetic,
    faster (``inference/onnx_encoder.py``). On a CPU glibc's malloc keeps freed memory for the next tile
    (``desam_nnu/allocator.py``: grid mode 1.8x faster on hippocampus)."""

    def __init__(self, tile_step_size: float = 0.5, use_mirroring: bool = True,
                 device: torch.device = torch.device("cpu"), prompt_overrides: Optional[dict] = None,
                 verbose: bool = False, allow_tqdm: bool = True, tiles_per_call: Optional[int] = None,
                 tile_memory_cap: Optional[int] = None, bf16: bool = False, onnx: bool = True) -> None:
        super().__init__(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                         perform_everything_on_device=device.type == "cuda", device=device, verbose=verbose,
                         allow_tqdm=allow_tqdm)
        self.prompt_overrides = {k: v for k, v in (prompt_overrides or {}).items() if v is not None}
        self.model_folder: Optional[str] = None
        self.prompts: Optional[PromptSettings] = None
        self.chosen: Optional[InferenceConfiguration] = None
        self.postprocessing: Optional[Tuple[list, list]] = None  # nnU-Net's (pp_fns, pp_fn_kwargs)
        self.trained_modes: Tuple[str, ...] = ()
        self.configuration_note = ""
        if tiles_per_call is not None and tiles_per_call < 1:
            raise ValueError(f"tiles per call {tiles_per_call}: use 1 or more")
        self._tiles_per_call, self.tile_memory_cap = tiles_per_call, tile_memory_cap
        self.onnx = onnx
        if device.type == "cpu":
            retain_freed_memory()
        try:
            self.encoder_dtype = bf16_encoder_dtype(device) if bf16 else None
        except ValueError as e:
            raise DeSAMInputError(str(e)) from e

    @property
    def desam(self) -> DeSAMConfig:
        return self.configuration_manager.desam

    @property
    def tiles_per_call(self) -> int:
        """Tiles per network call: as set, or as many as fit under the memory cap up to the device's limit (one on a
        CPU), decided on first use."""
        if self._tiles_per_call is None:
            cap = self.tile_memory_cap if self.tile_memory_cap is not None else memory_cap(self.device)
            self._tiles_per_call = tiles_per_call(tile_working_bytes(self.desam), cap, per_call_limit(self.device))
        return self._tiles_per_call

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data: torch.Tensor, slicers,
                                                       do_on_device: bool = True) -> torch.Tensor:
        """nnU-Net's tile loop, many tiles per call (see ``inference/tiles.py``): the one method of its sliding
        window that holds more than one tile; the slicers, padding, mirroring and OOM fallback stay nnU-Net's."""
        results_device = self.device if do_on_device else torch.device("cpu")
        while True:
            empty_cache(self.device)
            try:
                return sliding_window_batched(data, slicers, self.tiles_per_call,
                                              self.label_manager.num_segmentation_heads,
                                              self.configuration_manager.patch_size,
                                              self._internal_maybe_mirror_and_predict, self.device, results_device,
                                              self.use_gaussian, self.allow_tqdm,
                                              getattr(self.network, "tiles_at", None))
            except torch.cuda.OutOfMemoryError:  # the estimate was short for this GPU: half the tiles, again
                if self.tiles_per_call == 1:
                    raise
                self._tiles_per_call = self.tiles_per_call // 2

    def manual_initialization(self, network: Optional[torch.nn.Module], plans_manager, configuration_manager,
                              parameters: Optional[List[dict]], dataset_json: dict, trainer_name: str,
                              inference_allowed_mirroring_axes: Optional[Tuple[int, ...]]) -> None:
        """nnU-Net's, then DeSAM's encoder in ONNX Runtime where that keeps the numbers (``onnx``): on a CPU, in
        float32, with weights that no later fold replaces (nnU-Net's per-fold loop would load other ones after
        the export). The trainer's final validation comes through here too, so that the candidates it records
        for ``desam_find_best_configuration`` are what ``desam_predict`` computes."""
        super().manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                      trainer_name, inference_allowed_mirroring_axes)
        if (self.onnx and self.device.type == "cpu" and self.encoder_dtype is None and isinstance(network, DeSAMTiles)
                and (not parameters or len(parameters) == 1 or _same_encoder(parameters))):
            network.fast_encoder = OnnxEncoder(network.desam)

    def wrap(self, network: torch.nn.Module, cfg: DeSAMConfig, ensemble: Sequence[DeSAM] = ()) -> TileNetwork:
        """The plans' network -> the tile network nnU-Net's sliding window calls: a prompt-free family's
        as it is, DeSAM with this predictor's prompts (the plans' defaults with the overrides, when no
        model folder chose them)."""
        if cfg.prompts is None:
            if self.encoder_dtype is not None:
                raise DeSAMInputError(f"--bf16 is DeSAM's (its image encoder alone); {cfg.family} predicts in float32")
            return MixtureTiles(network, cfg) if cfg.slices_per_patch else PromptFreeTiles(network, cfg)
        self.prompts = self.prompts or PromptSettings.from_plans(cfg, **self.prompt_overrides)
        prompts = self.prompts
        return PromptedDeSAM(network, cfg, prompts, ensemble=ensemble, encoder_dtype=self.encoder_dtype)

    def choose_prompts(self, folder: str, folds: Sequence[FoldSpec], cfg: DeSAMConfig, labels: Sequence[int]) -> None:
        """Settle prompts and postprocessing for ``folds`` of ``folder`` (see the class docstring)."""
        self.trained_modes = trained_predict_modes(folder, folds, cfg.prompts)
        self.chosen = read_configuration(folder, self.trained_modes, labels)
        given = ", ".join(f"{k}={v}" for k, v in self.prompt_overrides.items())
        if self.chosen is not None:
            self.prompts = replace(self.chosen.prompts, **self.prompt_overrides)
            self.postprocessing = self.chosen.postprocessing_functions()
            self.configuration_note = (f"using the configuration chosen from cross-validation ({self.chosen.path}): "
                                       f"{self.chosen.describe()}"
                                       + (f"; from the command line: {given}" if given else ""))
        else:
            base = serving_defaults(cfg, self.trained_modes)
            self.prompts = replace(base, **self.prompt_overrides)
            self.configuration_note = (
                f"no chosen inference configuration in {folder}: the plans' defaults"
                + (f" with {given}" if given else f" ({base.mode} prompts)")
                + f"; desam_find_best_configuration {os.path.basename(os.path.dirname(folder))} chooses them from "
                  f"the folds' validation")
        if self.trained_modes and self.prompts.mode not in self.trained_modes:
            self.configuration_note += (f". warning: {self.prompts.mode} prompts were not trained (the folds were "
                                        f"trained for {', '.join(self.trained_modes)})")
        if self.prompts.mode == "grid" and self.prompts.coarse_grid and self.prompts.iou_threshold > 0:
            self.configuration_note += (f". warning: --coarse-grid with --iou-thresh {self.prompts.iou_threshold:g} "
                                        f"misses objects that fall between its coarse points (BENCHMARKS, prediction "
                                        f"options); it suits --iou-thresh -1")

    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds: Optional[Sequence[FoldSpec]],
                                             checkpoint_name: str = "checkpoint_final.pth") -> None:
        """Load plans, dataset.json and each fold's weights; build DeSAM from the plans (see module docstring)."""
        folder = model_training_output_dir
        folds = resolve_folds(folder, use_folds, checkpoint_name)
        plans_manager = DeSAMPlansManager(load_json(join(folder, "plans.json")))
        dataset_json = load_json(join(folder, "dataset.json"))
        parameters, first, frozen = [], None, {}
        for f in folds:
            path = join(folder, f"fold_{f}", checkpoint_name)
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=False)
                weights = checkpoint["network_weights"]
                first = first or checkpoint
                configuration = first["init_args"]["configuration"]
            except Exception as e:
                raise DeSAMInputError(f"{path}: not a readable desam_train checkpoint ({_one_line(e)[:200]})") from e
            try:  # a slim checkpoint's frozen encoder, held once in the model folder and shared by the folds
                parameters.append(expand_weights(weights, folder, path, frozen))
            except FrozenEncoderError as e:
                raise DeSAMInputError(str(e)) from e
        configuration_manager = plans_manager.get_configuration(configuration)
        cfg = configuration_manager.desam
        labels = plans_manager.get_label_manager(dataset_json).foreground_labels
        if cfg.prompts is not None:
            self.choose_prompts(folder, folds, cfg, labels)
        else:
            self.chosen = read_configuration(folder, (), labels, prompted=False)
            ignored = f"; ignored: {', '.join(self.prompt_overrides)}" if self.prompt_overrides else ""
            automatic = ("a box over each whole tile per class" if cfg.automatic_mode == "whole_image_box" else
                         "prompt-free: every class from the image alone")
            self.configuration_note = f"{cfg.family} without a prompts file: {automatic}{ignored}"
            if self.chosen is not None:
                self.postprocessing = self.chosen.postprocessing_functions()
                self.configuration_note += (f"; using the postprocessing chosen from cross-validation "
                                            f"({self.chosen.path}): {self.chosen.describe()}")
        network = cfg.build_network()
        # folds that froze the same encoder hold it once and encode each tile once (see PromptedDeSAM)
        ensemble = [network] + [copy.deepcopy(network, {id(network.image_encoder): network.image_encoder})
                                for _ in parameters[1:]] if _same_encoder(parameters) else []
        self.manual_initialization(self.wrap(network, cfg, ensemble), plans_manager, configuration_manager,
                                   parameters, dataset_json, first["trainer_name"],
                                   first.get("inference_allowed_mirroring_axes"))
        for f, params, net in zip(folds, parameters, ensemble or [network] * len(parameters)):
            try:  # strict keys: a checkpoint of another model is refused up front
                net.load_state_dict(params)
            except RuntimeError as e:
                raise DeSAMInputError(f"{join(folder, f'fold_{f}', checkpoint_name)}: does not fit the plans' "
                                      f"{cfg.backbone} model ({_one_line(e)[:200]})") from e
        self.model_folder = folder
        if self.encoder_dtype is not None:
            self.configuration_note += "; the image encoder in bfloat16 (--bf16: faster, not exact)"

    def predict_case(self, data: torch.Tensor) -> Tuple[torch.Tensor, GridStats]:
        """One preprocessed case [C, Z, Y, X] -> (logits, grid statistics): the per-case core of
        ``desam_predict`` and of the trainers' final validation. With fold weights (a model folder) every
        fold predicts (nnU-Net's ensembling); without (a trainer's network as it is) one sliding window."""
        with self.network.collecting() as stats:
            if self.list_of_parameters:
                logits = self.predict_logits_from_preprocessed_data(data)
            else:
                logits = self.predict_sliding_window_return_logits(data).to("cpu")
        return logits, stats

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """One sliding window for a fold ensemble that shares its encoder (its tile network averages the
        folds); otherwise nnU-Net's: each fold's weights loaded in turn, one sliding window each."""
        if not len(self.network.ensemble):
            return super().predict_logits_from_preprocessed_data(data)
        return self.predict_sliding_window_return_logits(data).to("cpu")

    # ------------------------------------------------------------------ whole folders
    def _done(self, output_folder: str, case: str, save_probabilities: bool) -> bool:
        names = [case + self.dataset_json["file_ending"]]
        names += [case + ".npz", case + ".pkl"] if save_probabilities else []
        return all(os.path.isfile(join(output_folder, n)) for n in names)

    def predict_folder(self, input_folder: str, output_folder: str, save_probabilities: bool = False,
                       continue_prediction: bool = False, preview: bool = False, num_processes_preprocessing: int = 1,
                       num_processes_export: int = 1, num_parts: int = 1, part_id: int = 0,
                       prompts_file: Optional[str] = None) -> PredictionReport:
        """Predict every case of ``input_folder`` (or part ``part_id`` of ``num_parts``) into ``output_folder``
        (see the module docstring), prompted by ``prompts_file`` when given (checked whole first)."""
        plans = self.plans_manager.plans
        needs_3d = int(plans.get("original_median_shape_after_transp", [2])[0]) > 1
        every = collect_cases(input_folder, self.dataset_json["file_ending"],
                              self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})),
                              needs_3d)
        user = self._use_prompts_file(prompts_file, every) if prompts_file else None
        inputs = every.part(num_parts, part_id)
        report = PredictionReport(failures=dict(inputs.failures))
        os.makedirs(output_folder, exist_ok=True)
        remove_partials(output_folder, inputs.cases)
        atomic_write_json(self.dataset_json, join(output_folder, "dataset.json"))
        atomic_write_json(plans, join(output_folder, "plans.json"))
        prompts = self.prompts
        atomic_write_json({"input_folder": os.path.abspath(input_folder), "model_folder": self.model_folder,
                           "family": self.desam.family, "prompt_mode": prompts and prompts.mode,
                           "grid_points_per_side": prompts and prompts.grid_points_per_side,
                           "iou_threshold": prompts and prompts.iou_threshold, "top_k": prompts and prompts.top_k,
                           "chosen_configuration": self.chosen.path if self.chosen else None,
                           "postprocessing": [fn.__name__ for fn in (self.postprocessing or [[]])[0]],
                           "tile_step_size": self.tile_step_size, "use_mirroring": self.use_mirroring,
                           "tiles_per_call": self.tiles_per_call, "prompts_file": prompts_file and
                           os.path.abspath(prompts_file),
                           "folds": len(self.list_of_parameters), "save_probabilities": save_probabilities},
                          join(output_folder, "predict_args.json"))
        todo = []
        for case in inputs.cases:
            if continue_prediction and self._done(output_folder, case, save_probabilities):
                report.skipped.append(case)
            else:
                todo.append(case)
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        exports: Deque[Tuple[str, object]] = deque()
        try:
            with _Workers(num_processes_preprocessing) as pre, _Workers(num_processes_export) as export:
                queued: Deque[Tuple[str, object]] = deque()

                def enqueue(i: int) -> None:
                    if i < len(todo):
                        queued.append((todo[i], pre.submit(_preprocess, preprocessor, inputs.cases[todo[i]],
                                                           self.plans_manager, self.configuration_manager,
                                                           self.dataset_json)))

                read_ahead = num_processes_preprocessing + 1  # bounded: memory stays flat however many cases
                for i in range(read_ahead):
                    enqueue(i)
                for i in tqdm(range(len(todo)), desc="Cases", unit="case", disable=not self.allow_tqdm):
                    case, job = queued.popleft()
                    enqueue(i + read_ahead)
                    try:
                        data, properties = job.get()
                        if user is not None:
                            self.network.begin_case(slice_prompts(user[case], properties,
                                                                  self.plans_manager.transpose_forward,
                                                                  np.shape(data)[1:]),
                                                    np.shape(data)[1:], self.configuration_manager.patch_size)
                        logits, stats = self.predict_case(torch.from_numpy(np.asarray(data)))
                        if stats.kept_no_prompt:
                            report.all_background.append(case)
                    except Exception as e:  # one bad case must not stop the others
                        report.failures[case] = _one_line(e) if isinstance(e, DeSAMInputError) else \
                            f"{inputs.cases[case][0]}: {type(e).__name__}: {_one_line(e)[:300]}"
                        continue
                    exports.append((case, export.submit(export_case_atomically, logits, properties,
                                                        self.configuration_manager, self.plans_manager,
                                                        self.dataset_json, output_folder, case, save_probabilities,
                                                        self.postprocessing)))
                    while len(exports) > num_processes_export:
                        _finish_export(*exports.popleft(), report)
                while exports:
                    _finish_export(*exports.popleft(), report)
        finally:
            remove_partials(output_folder, inputs.cases)
        if preview:
            report.previews = self._previews(input_folder, output_folder, inputs.cases, report)
        return report

    def _use_prompts_file(self, path: str, inputs: InputCases) -> Dict[str, CasePrompts]:
        """The user's prompts for the ``inputs`` (every problem raised before anything is written) and the tile
        network that takes them in place of the automatic mode; mirroring off (it would need mirrored prompts)."""
        if not self.desam.user_prompts:
            raise DeSAMInputError(f"--prompts {path}: the {self.desam.family} family is prompt-free")
        images = {**{c: None for c in inputs.failures}, **{c: files[0] for c, files in inputs.cases.items()}}
        prompts = read_prompts(path, images, [int(c) for c in self.label_manager.foreground_labels],
                               self.desam.user_prompts)
        if self.desam.prompts is None:  # a box-prompted family without DeSAM's prompt modes (DB-SAM)
            self.network = UserPromptedBoxes(self.network.network, self.desam)
        else:
            fast_encoder = self.network.fast_encoder
            self.network = UserPromptedDeSAM(self.network.desam, self.desam, ensemble=self.network.ensemble,
                                             encoder_dtype=self.encoder_dtype)
            self.network.fast_encoder = fast_encoder
        self.use_mirroring = False
        self.prompts = None
        self.configuration_note = f"prompts from {path}, not the automatic mode"
        return prompts

    def _previews(self, input_folder: str, output_folder: str, cases: Dict[str, List[str]],
                  report: PredictionReport) -> List[str]:
        """One PNG per predicted case, with the ground truth when labels lie alongside the images."""
        from desam_nnu.inference.preview import find_label_file, write_preview
        ending = self.dataset_json["file_ending"]
        names = {v: k for k, v in self.dataset_json["labels"].items() if isinstance(v, int) and v > 0}
        folder = join(output_folder, "previews")
        os.makedirs(folder, exist_ok=True)
        written = []
        for case in tqdm(report.written + report.skipped, desc="Previews", disable=not self.allow_tqdm):
            png = join(folder, case + ".png")
            try:
                write_preview(cases[case][0], join(output_folder, case + ending), png, self.desam.slicing_axis,
                              label_file=find_label_file(input_folder, case, ending), label_names=names)
                written.append(png)
            except Exception as e:
                report.failures[case] = f"{png}: preview failed ({type(e).__name__}: {_one_line(e)[:200]})"
        return written


def _finish_export(case: str, job, report: PredictionReport) -> None:
    try:
        job.get()
        report.written.append(case)
    except Exception as e:
        report.failures[case] = f"{case}: export failed ({type(e).__name__}: {_one_line(e)[:300]})"
