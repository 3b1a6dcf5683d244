"""Train a model: ``python train.py experiment=quickstart`` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

import seg  # noqa: F401  (registers the config resolvers)
from seg.train import main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def run(cfg: DictConfig) -> None:
    main(cfg)


if __name__ == "__main__":
    run()
