"""Evaluate a checkpoint: ``python evaluate.py ckpt=PATH`` (see conf/evaluate.yaml)."""

import hydra
from omegaconf import DictConfig

import seg  # noqa: F401  (registers the config resolvers)
from seg.evaluate import main


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def run(cfg: DictConfig) -> None:
    main(cfg)


if __name__ == "__main__":
    run()
