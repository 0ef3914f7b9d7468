"""EKSFT on TRL: ``EKSFTTrainer(trl.SFTTrainer)`` and its ``EKSFTConfig(trl.SFTConfig)``.

Swapping plain SFT for EKSFT::

    from eksft.trainer import EKSFTConfig, EKSFTTrainer
    trainer = EKSFTTrainer(model, args=EKSFTConfig(output_dir="out", rho=0.2), train_dataset=dataset)
    trainer.train()
"""

from .eksft_config import EKSFTConfig
from .eksft_trainer import EKSFTTrainer

__all__ = ["EKSFTConfig", "EKSFTTrainer"]
