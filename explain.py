"""See what a trained net sees: ``python explain.py ckpt=PATH input=IMAGES output=DIR``."""

import hydra
from omegaconf import DictConfig

from seg.cli import run


@hydra.main(version_base="1.3", config_path="conf", config_name="explain")
def main(cfg: DictConfig) -> None:
    from seg.explain import explain  # after composing: --help and config errors stay fast

    run(explain, cfg)


if __name__ == "__main__":
    main()
