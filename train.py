"""Train a model: ``python train.py experiment=quickstart`` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from seg.cli import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from seg.train import train  # after composing: --help and config errors stay fast

    run(train, cfg)


if __name__ == "__main__":
    main()
