"""Write masks for a folder of images: ``python predict.py ckpt=PATH input=DIR output=OUT``."""

import sys

import hydra
from omegaconf import DictConfig

import seg  # noqa: F401  (registers the config resolvers)
from seg.predict import main


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def run(cfg: DictConfig) -> None:
    status = main(cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    run()
