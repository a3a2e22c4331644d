"""LightningCLI entry point: model, data and monitors from YAML.

    python examples/cli.py fit --config examples/configs/digits_mlp.yaml
    python examples/cli.py fit --config examples/configs/mnist_mlp.yaml --data.data_dir DATA
    python examples/cli.py fit --config examples/configs/cifar10_cnn.yaml --data.data_dir DATA --data.download true
    python examples/cli.py fit --help          # every option of the model, the data and the trainer

``model.model`` takes any ``nn.Module`` as ``class_path``/``init_args``; ``data`` any datamodule of
``lightning_sensitivity.models`` (or your own ``LightningDataModule``). Monitors go in ``trainer.callbacks``.
"""

from lightning.pytorch.cli import LightningCLI

from lightning_sensitivity.models import LitClassifier


def main(args=None) -> LightningCLI:
    return LightningCLI(
        LitClassifier,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
