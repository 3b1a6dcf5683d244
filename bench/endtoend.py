"""End-to-end measurements of ``bench/run.py``: the input pipeline, ``predict.py`` and peak memory."""

from __future__ import annotations

import multiprocessing as mp
import re
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import CONF, SHARED, load_preset
from data_pipeline import images_per_second
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from timing import compose_train, random_batch, seg_step_times, sync

from seg.data.sample import ensure_sample
from seg.data.voc import VOCSegmentation, read_image
from seg.inference import InferenceConfig, predict_probs, prepare_net
from seg.predict import predict


def data_root(repo: Path) -> tuple[str, str]:
    """(root, description): the real VOC sample in ../shared when present, else the synthetic one."""
    if (SHARED / "voc-sample" / "VOC2012").is_dir():
        return str(SHARED / "voc-sample"), "../shared/voc-sample (7 real VOC 2012 photos)"
    return str(ensure_sample(repo / "data" / "sample")), "data/sample (synthetic, 150-260 px)"


def synthetic_root(repo: Path) -> str:
    """The synthetic VOC-layout sample (48 train images): enough for full training batches."""
    return str(ensure_sample(repo / "data" / "sample"))


def loader_rates(root: str, crop: int, batch: int, workers: list[int], images: int) -> dict:
    """Median images/s of the train pipeline (decode + ``augment=voc``) per worker count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as inside a DataLoader worker
    try:
        data = VOCSegmentation(root, "train", transform=load_preset("voc", "train", crop))
        return {
            w: statistics.median(images_per_second(data, w, images, batch, passes=3, warmup=1))
            for w in workers
        }
    finally:
        torch.set_num_threads(threads)


def make_checkpoint(model: str, out: Path) -> Path:
    """A seg checkpoint (random init) of ``model`` as ``train.py`` writes it: config + weights,
    the weights channels_last when the module trains so (``model.channels_last``)."""
    cfg = compose_train([f"model={model}", f"paths.output_dir={out}"])
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    if cfg.model.get("channels_last", False):  # as BaseModule.setup leaves it
        net.to(memory_format=torch.channels_last)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    path = out / f"{model}.ckpt"
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"state_dict": state, "seg_config": config}, path)
    return path


def predict_vs_model(model: str, root: str, repeats: int, copies: int = 3) -> dict:
    """images/s of ``predict.py`` end to end (decode, model, PNG) against the model alone.

    The input folder holds ``copies`` copies of the sample's JPEGs, so that loading the
    checkpoint (counted: it is part of a predict run) is spread over more images. The
    model-only arm runs the same net through the same ``seg.inference`` path on the same
    images, already decoded and normalised in memory. The two arms alternate ``repeats`` times.
    """
    sources = sorted((Path(root) / "VOC2012" / "JPEGImages").glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        images = _copy_inputs(sources, Path(tmp) / "in", copies)
        ckpt = make_checkpoint(model, Path(tmp))
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            overrides = [f"ckpt={ckpt}", f"input={tmp}/in", f"output={tmp}/out", "overwrite=true"]
            cfg = compose(config_name="predict", overrides=overrides)
        infer = InferenceConfig.from_config(cfg)
        net, tensors = _model_and_inputs(ckpt, images)
        net = prepare_net(net, infer, len(images))  # the module predict.py runs
        predict_probs(net, tensors[0], infer)  # warm-up
        e2e, alone = [], []
        for _ in range(repeats):
            e2e.append(_timed(lambda: predict(cfg)))
            alone.append(_timed(lambda: [predict_probs(net, x, infer) for x in tensors]))
    e2e_rate = len(images) / statistics.median(e2e)
    model_rate = len(images) / statistics.median(alone)
    return {"predict_img_s": e2e_rate, "model_img_s": model_rate, "ratio": e2e_rate / model_rate}


def _copy_inputs(sources: list[Path], folder: Path, copies: int) -> list[Path]:
    folder.mkdir(parents=True)
    for k in range(copies):
        for src in sources:
            shutil.copyfile(src, folder / f"{src.stem}_{k}{src.suffix}")
    return sorted(folder.iterdir())


def _model_and_inputs(ckpt: Path, images: list[Path]):
    from seg.checkpoint import build_net, load_checkpoint

    loaded = load_checkpoint(ckpt)
    transform = instantiate(loaded["seg_config"]["augment"]["eval"])
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where predict.py runs the net
    tensors = [transform(image=read_image(p))["image"].unsqueeze(0).to(device) for p in images]
    return build_net(loaded).to(device), tensors  # (1, 3, H, W) each


def _timed(fn) -> float:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)  # the model-alone arm leaves its GPU work queued
    return time.perf_counter() - start


def _peak_rss_child(model: str, batch: int, crop: int, steps: int, queue) -> None:
    trainer = "trainer=gpu" if torch.cuda.is_available() else "trainer=cpu"
    cfg = compose_train([f"model={model}", trainer, "optimizer=sgd", "scheduler=poly"])
    x, y = random_batch(batch, crop, "cpu")
    seg_step_times(cfg, x, y, steps)
    queue.put(high_water_mb())


def high_water_mb() -> float:
    """Peak RSS (MiB) of this process since its exec: VmHWM (``ru_maxrss`` survives exec)."""
    status = Path("/proc/self/status")
    if status.is_file():
        kib = re.search(r"^VmHWM:\s*(\d+) kB", status.read_text(), re.MULTILINE)
        if kib:
            return int(kib.group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_rss_mb(model: str, batch: int, crop: int, steps: int = 2) -> float:
    """Peak resident memory (MiB) of a fresh process that trains ``model`` for ``steps`` steps."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_rss_child, args=(model, batch, crop, steps, queue))
    proc.start()
    value = queue.get(timeout=1800)
    proc.join()
    return float(value)


def cuda_peak_mb(fn) -> float | None:
    """CUDA max-allocated memory (MiB) while ``fn`` runs, or None without a GPU."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync("cuda")
    return torch.cuda.max_memory_allocated() / 2**20
