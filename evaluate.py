"""Evaluate a checkpoint: ``python evaluate.py ckpt=PATH`` (see conf/evaluate.yaml)."""

import hydra
from omegaconf import DictConfig

from seg.cli import run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from seg.evaluate import evaluate  # after composing: --help and config errors stay fast

    run(evaluate, cfg)


if __name__ == "__main__":
    main()
