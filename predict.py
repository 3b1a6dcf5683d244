"""Write masks for a folder of images: ``python predict.py ckpt=PATH input=DIR output=OUT``."""

import hydra
from omegaconf import DictConfig

from seg.cli import run


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from seg.predict import predict  # after composing: --help and config errors stay fast

    run(predict, cfg)


if __name__ == "__main__":
    main()
