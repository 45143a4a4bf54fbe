"""The RobustBench entries `gacd` can load: architecture, normalisation, Google Drive file and
the clean / AutoAttack accuracy RobustBench publishes for each.

Architectures and files follow robustbench 1.1.1 (`model_zoo/cifar10.py`, `cifar100.py`);
the accuracies are the `clean_acc` and `autoattack_acc` fields of RobustBench's per-model
`model_info/<dataset>/<threat>/<name>.json` (full test set; L-inf eps 8/255 unless `eps`
says otherwise, L2 eps 0.5). `None` where that file was not available to us: see the
leaderboard at https://robustbench.github.io.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# Rice et al.'s CIFAR-100 statistics, at full precision as their model class has them.
RICE_CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
RICE_CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
NO_NORM = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # the model sees [0, 1] pixels as they are

# How RobustBench's module names its parameters; `gacd.models.zoo` maps each to ours.
FAMILIES = ("dm_wrn", "dm_preact", "wrn", "resnet", "preact")


@dataclass(frozen=True)
class ZooEntry:
    dataset: str  # cifar10 | cifar100
    threat: str  # Linf | L2
    name: str  # RobustBench's model name, also the checkpoint's file name (NAME.pt)
    family: str  # one of FAMILIES
    arch: str  # our registered architecture
    kwargs: dict[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gdrive_id: str
    clean: float | None  # RobustBench's clean accuracy (%)
    autoattack: float | None  # RobustBench's AutoAttack accuracy (%)
    eps: str = ""  # the threat model's budget ("" : 8/255 for Linf, 0.5 for L2)
    # Checkpoint keys of modules RobustBench's model builds but never runs (the classic
    # WideResNet's `sub_block1`): dropped on load, every other key must match.
    unused_prefixes: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"robustbench:{self.dataset}/{self.threat}/{self.name}"

    @property
    def num_classes(self) -> int:
        return {"cifar10": 10, "cifar100": 100}[self.dataset]

    @property
    def budget(self) -> str:
        return self.eps or ("8/255" if self.threat == "Linf" else "0.5")

    @property
    def architecture(self) -> str:
        """A readable architecture name, e.g. 'WRN-28-10 (DeepMind, SiLU)'."""
        k = self.kwargs
        if self.family == "dm_wrn":
            act = {"swish": "Swish", "silu": "SiLU", "relu": "ReLU"}[k["activation"]]
            return f"WRN-{k['depth']}-{k['width']} (DeepMind, {act})"
        if self.family == "dm_preact":
            return f"PreActResNet-{k.get('depth', 18)} (DeepMind, Swish)"
        if self.family == "wrn":
            return f"WRN-{k['depth']}-{k['widen_factor']}"
        if self.family == "resnet":
            return "ResNet-18"
        return "PreActResNet-18"


def _dm_wrn(depth: int, width: int, activation: str) -> dict[str, Any]:
    kwargs = {"depth": depth, "width": width, "activation": activation}
    return {"family": "dm_wrn", "arch": "dm_wrn", "kwargs": kwargs}


_DM_R18 = {
    "family": "dm_preact",
    "arch": "dm_preact_resnet",
    "kwargs": {"depth": 18, "activation": "swish"},
}


def _wrn(depth: int, widen: int, sub_block1: bool = False) -> dict[str, Any]:
    return {
        "family": "wrn",
        "arch": "wrn",
        "kwargs": {"depth": depth, "widen_factor": widen},
        "unused_prefixes": ("sub_block1.",) if sub_block1 else (),
    }


_R18 = {"family": "resnet", "arch": "resnet18", "kwargs": {}}
# He et al.'s public PreActResNet-18: raw-input projection shortcuts, no BN before pooling.
_PREACT_RAW = {
    "family": "preact",
    "arch": "preact_resnet18",
    "kwargs": {"shortcut_input": "raw", "final_bn": False},
}
# The variant with pre-activated projection shortcuts and a final BN-ReLU (our default).
_PREACT = {"family": "preact", "arch": "preact_resnet18", "kwargs": {}}


def _e(
    dataset: str,
    threat: str,
    name: str,
    arch: dict[str, Any],
    norm: str,
    gdrive_id: str,
    clean: float | None,
    autoattack: float | None,
    eps: str = "",
) -> ZooEntry:
    mean, std = {
        "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
        "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
        "rice100": (RICE_CIFAR100_MEAN, RICE_CIFAR100_STD),
        "none": NO_NORM,
    }[norm]
    return ZooEntry(
        dataset=dataset,
        threat=threat,
        name=name,
        mean=mean,
        std=std,
        gdrive_id=gdrive_id,
        clean=clean,
        autoattack=autoattack,
        eps=eps,
        **arch,
    )


C10, C100 = "cifar10", "cifar100"

ENTRIES: tuple[ZooEntry, ...] = (
    # ---- CIFAR-10, L-inf -----------------------------------------------------------------
    _e(C10, "Linf", "Bartoldson2024Adversarial_WRN-94-16", _dm_wrn(94, 16, "silu"), C10,
       "1g6o9H1b6vjoBi1USdCBt64C8B8LPiioX", 93.68, 73.71),
    _e(C10, "Linf", "Bartoldson2024Adversarial_WRN-82-8", _dm_wrn(82, 8, "silu"), C10,
       "1--jl8qJh624SFqFffvg1IkYR-fZGA2Sr", 93.11, 71.59),
    _e(C10, "Linf", "Wang2023Better_WRN-70-16", _dm_wrn(70, 16, "silu"), C10,
       "1-RF7ZSS-PAh6bfQcuqx4lh9bc9BUGnap", 93.25, 70.69),
    _e(C10, "Linf", "Wang2023Better_WRN-28-10", _dm_wrn(28, 10, "silu"), C10,
       "1-6MYKJdECDVGaWjj6GgqvaT95BGKhUvI", 92.44, 67.31),
    _e(C10, "Linf", "Cui2023Decoupled_WRN-28-10", _dm_wrn(28, 10, "silu"), C10,
       "1-AaTrYt23WJFR22hXgBd-i6kjpsz6Hf2", 92.16, 67.73),
    _e(C10, "Linf", "Xu2023Exploring_WRN-28-10", _dm_wrn(28, 10, "silu"), C10,
       "1k1uJI13ft0h0dfzuEihVpBvjBXwFRH2o", 93.69, 63.89),
    _e(C10, "Linf", "Gowal2021Improving_70_16_ddpm_100m", _dm_wrn(70, 16, "swish"), C10,
       "10qBoDG_NomJBrRFeTsSwEcJF1GA-sjC4", 88.74, 66.11),
    _e(C10, "Linf", "Gowal2021Improving_28_10_ddpm_100m", _dm_wrn(28, 10, "swish"), C10,
       "12L8YE6VBgUDKyW6GMSNefSYj2gg4LEKx", None, None),
    _e(C10, "Linf", "Gowal2021Improving_R18_ddpm_100m", _DM_R18, C10,
       "1-0EuCJashqSXEkkd1DOzFA4tH8KL2kim", None, None),
    _e(C10, "Linf", "Gowal2020Uncovering_70_16_extra", _dm_wrn(70, 16, "swish"), C10,
       "1GxryYj_Or-VCDca0wgiFLz4ssXSZXQoJ", 91.10, 65.87),
    _e(C10, "Linf", "Gowal2020Uncovering_70_16", _dm_wrn(70, 16, "swish"), C10,
       "1DVwKclibqzniE2Ss5_g6BY77ChG8QKzl", 85.29, 57.14),
    _e(C10, "Linf", "Gowal2020Uncovering_34_20", _dm_wrn(34, 20, "swish"), C10,
       "1YWvZO1u9_yNLFNC3JYd_TVkvrRSMER1O", 85.64, 56.82),
    _e(C10, "Linf", "Gowal2020Uncovering_28_10_extra", _dm_wrn(28, 10, "swish"), C10,
       "1MBAWGxiZxKt-GfqEqtLcXcd3tAxPhvV2", 89.48, 62.76),
    _e(C10, "Linf", "Rebuffi2021Fixing_106_16_cutmix_ddpm", _dm_wrn(106, 16, "swish"), C10,
       "1-4qnkveIkeWoGdF72kpEFHETiY3y4_tF", 88.50, 64.64),
    _e(C10, "Linf", "Rebuffi2021Fixing_70_16_cutmix_extra", _dm_wrn(70, 16, "swish"), C10,
       "1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg", 92.23, 66.58),
    _e(C10, "Linf", "Rebuffi2021Fixing_70_16_cutmix_ddpm", _dm_wrn(70, 16, "swish"), C10,
       "1-8CWRT-OFWyrz4T4s0I2mbFjPg8K_MUi", 88.54, 64.25),
    _e(C10, "Linf", "Rebuffi2021Fixing_28_10_cutmix_ddpm", _dm_wrn(28, 10, "swish"), C10,
       "1-0EChXbc6pOvx26O17av263bCeqIAz6s", 87.33, 60.75),
    _e(C10, "Linf", "Rebuffi2021Fixing_R18_ddpm", _DM_R18, C10,
       "1--dxE66AsgBSUsuK2sXCTrsYUV9B5f95", 83.53, 56.66),
    _e(C10, "Linf", "Pang2022Robustness_WRN70_16", _dm_wrn(70, 16, "swish"), C10,
       "1uQZYUuUiL9BzaQUeXLhjr_RhoyFRrHe3", 89.01, 63.35),
    _e(C10, "Linf", "Pang2022Robustness_WRN28_10", _dm_wrn(28, 10, "swish"), C10,
       "16ChNkterCp17BXv-xxqpfedb4u2_CjjS", 88.61, 61.04),
    _e(C10, "Linf", "Rade2021Helper_extra", _dm_wrn(34, 10, "swish"), C10,
       "1GhAp-0C3ONRy9BxIe0J9vKc082vHvR7t", 91.47, 62.83),
    _e(C10, "Linf", "Rade2021Helper_ddpm", _dm_wrn(28, 10, "swish"), C10,
       "1AOF6LxnwgS5fCz_lVLYqs_wnUYuv6O7z", 88.16, 60.97),
    _e(C10, "Linf", "Rade2021Helper_R18_extra", _DM_R18, C10,
       "1hdXk1rPJql2Oa84Kky64fMTQzng5UcTL", 89.02, 57.67),
    _e(C10, "Linf", "Rade2021Helper_R18_ddpm", _DM_R18, C10,
       "1f2yJUo-jxCQNk589frzriv6wPyrQEZdX", 86.86, 57.09),
    _e(C10, "Linf", "Carmon2019Unlabeled", _wrn(28, 10, sub_block1=True), "none",
       "15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ", 89.69, 59.53),
    _e(C10, "Linf", "Sehwag2021Proxy", _wrn(34, 10), "none",
       "1QFA5fPMj2Qw4aYNG33PkFqiv_RTDWvzm", 85.85, 59.09),
    _e(C10, "Linf", "Addepalli2021Towards_WRN34", _wrn(34, 10, sub_block1=True), "none",
       "1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB", 85.32, 58.04),
    _e(C10, "Linf", "Addepalli2022Efficient_WRN_34_10", _wrn(34, 10), "none",
       "1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA", 88.71, 57.81),
    _e(C10, "Linf", "Chen2024Data_WRN_34_10", _wrn(34, 10), "none",
       "1-AzyMQaoUuwxec6O_Yri5OVtVqnNgR4R", 86.54, 57.30),
    _e(C10, "Linf", "Cui2023Decoupled_WRN-34-10", _wrn(34, 10), "none",
       "1-ArD-TugRXUbH3VtM9qnzvby6NvdXNUN", 85.31, 57.09),
    # RobustBench's figures for this model sit in model_info/.../Chen2021Low_WRN34_10.json.
    _e(C10, "Linf", "Chen2021LTD_WRN34_10", _wrn(34, 10), "none",
       "1-0RoQKYvHLNh7hZ71wJjSit1XtrJQo9D", 85.21, 56.94),
    _e(C10, "Linf", "Jia2022LAS-AT_34_10", _wrn(34, 10), "none",
       "1-3l7xKhIPyes3O4QSz0HU6L-hfOoS0xD", 84.98, 56.26),
    _e(C10, "Linf", "Zhang2019Theoretically", _wrn(34, 10, sub_block1=True), "none",
       "1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_", 84.92, 53.08, eps="0.031"),
    _e(C10, "Linf", "Standard", _wrn(28, 10), "none",
       "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC", 94.78, 0.0),
    _e(C10, "Linf", "Sehwag2021Proxy_R18", _R18, "none",
       "1-ZgoSlD_AMhtXdnUElilxVXnzK2DcHuu", 84.38, 54.43),
    _e(C10, "Linf", "Addepalli2022Efficient_RN18", _R18, "none",
       "1m5vhdzIUUKhDbsZdOG9z76Eyp6f4xe_f", 85.71, 52.48),
    _e(C10, "Linf", "Addepalli2021Towards_RN18", _R18, "none",
       "1-1DxecXz5U_xZ54DVdE-GVm71Tiox-Ri", 80.24, 51.06),
    _e(C10, "Linf", "Wong2020Fast", _PREACT_RAW, C10,
       "1Re--_lf3jCEw9bnQqGkjw3J7v2tSZKrv", 83.34, 43.21),
    # ---- CIFAR-10, L2 ----------------------------------------------------------------------
    _e(C10, "L2", "Wang2023Better_WRN-70-16", _dm_wrn(70, 16, "silu"), C10,
       "101UyURyte05tJLA9VFRBN6UDLyn-0sJw", 95.54, 84.86),
    _e(C10, "L2", "Wang2023Better_WRN-28-10", _dm_wrn(28, 10, "silu"), C10,
       "1-fwKiJXEqHHUngt8wKsNnHuD4vAPvPXC", 95.16, 83.68),
    _e(C10, "L2", "Gowal2020Uncovering_extra", _dm_wrn(70, 16, "swish"), C10,
       "1pkZDCpCBShpAnx92n8PUeNOY1fSiTi0s", 94.74, 80.53),
    _e(C10, "L2", "Gowal2020Uncovering", _dm_wrn(70, 16, "swish"), C10,
       "1QL4SNvYydjIg1uI3VP9SyNt-2kTXRisG", 90.90, 74.50),
    _e(C10, "L2", "Rebuffi2021Fixing_70_16_cutmix_ddpm", _dm_wrn(70, 16, "swish"), C10,
       "1-8ECIOYF4JB0ywxJOmhkefnv4TW-KuXp", 92.41, 80.38),
    _e(C10, "L2", "Rebuffi2021Fixing_28_10_cutmix_ddpm", _dm_wrn(28, 10, "swish"), C10,
       "1-DUKcvfDzeWwt0NK7q2XvU-dIi8up8B0", 91.79, 78.69),
    _e(C10, "L2", "Rebuffi2021Fixing_R18_cutmix_ddpm", _DM_R18, C10,
       "1-AlwHsXU28tCOJsf9RKAZxVzbinzzQU3", 90.33, 75.86),
    _e(C10, "L2", "Rade2021Helper_R18_ddpm", _DM_R18, C10,
       "1VWrStAYy5CrUR18sjcpq_LKLpeqgUaoQ", 90.57, 76.15),
    _e(C10, "L2", "Sehwag2021Proxy", _wrn(34, 10), "none",
       "1UviikNzpltVFsgMuqQ8YhpmvGczGRS4S", 90.31, 76.12),
    _e(C10, "L2", "Sehwag2021Proxy_R18", _R18, "none",
       "1zPjjZj9wujBNkAmHHHIikem6_aIjMhXG", 89.52, 73.39),
    _e(C10, "L2", "Standard", _wrn(28, 10), "none",
       "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC", 94.78, 0.0),
    # ---- CIFAR-100, L-inf ------------------------------------------------------------------
    _e(C100, "Linf", "Wang2023Better_WRN-70-16", _dm_wrn(70, 16, "silu"), C100,
       "1-yYcT73GP13c0y9HrgtpyB3NAfkGKgjY", 75.22, 42.67),
    _e(C100, "Linf", "Wang2023Better_WRN-28-10", _dm_wrn(28, 10, "silu"), C100,
       "1-jOu3wKWyw0XnBCXDGR32xn8Bw9GTJgh", 72.58, 38.83),
    _e(C100, "Linf", "Cui2023Decoupled_WRN-28-10", _dm_wrn(28, 10, "silu"), C100,
       "15BwWdWbNfoarTEWWugicOVkTjh3nXH36", 73.85, 39.18),
    _e(C100, "Linf", "Gowal2020Uncovering_extra", _dm_wrn(70, 16, "swish"), C100,
       "1LQBdwO2b391mg7VKcP6I0HIOpC6O83gn", 69.15, 36.88),
    _e(C100, "Linf", "Gowal2020Uncovering", _dm_wrn(70, 16, "swish"), C100,
       "16I86x2Vv_HCRKROC86G4dQKgO3Po5mT3", 60.86, 30.03),
    _e(C100, "Linf", "Rebuffi2021Fixing_70_16_cutmix_ddpm", _dm_wrn(70, 16, "swish"), C100,
       "1-GkVLo9QaRjCJl-by67xda1ySVhYxsLV", 63.56, 34.64),
    _e(C100, "Linf", "Rebuffi2021Fixing_28_10_cutmix_ddpm", _dm_wrn(28, 10, "swish"), C100,
       "1-P7cs82Tj6UVx7Coin3tVurVKYwXWA9p", 62.41, 32.06),
    _e(C100, "Linf", "Rebuffi2021Fixing_R18_ddpm", _DM_R18, C100,
       "1-Qcph_EXw1SCYhDIl8cwqTQQy0sJKO8N", 56.87, 28.50),
    _e(C100, "Linf", "Rade2021Helper_R18_ddpm", _DM_R18, C100,
       "1-qUvfOjq6x4I8mZynfGtzzCH_nvqS_VQ", 61.50, 28.88),
    _e(C100, "Linf", "Pang2022Robustness_WRN70_16", _dm_wrn(70, 16, "swish"), C100,
       "1F3kn8KIdBVls8QuTWc3BbB83htkQeVQD", 65.56, 33.05),
    _e(C100, "Linf", "Pang2022Robustness_WRN28_10", _dm_wrn(28, 10, "swish"), C100,
       "1VDDM_j5M4b6sZpt1Nnhkr8FER3kjE33M", 63.66, 31.08),
    _e(C100, "Linf", "Cui2023Decoupled_WRN-34-10", _wrn(34, 10), "none",
       "1whziIioVu5SGI1fBKyc331IfG_1MgenN", 65.76, 31.91),
    _e(C100, "Linf", "Addepalli2022Efficient_WRN_34_10", _wrn(34, 10), "none",
       "1-3c-iniqNfiwGoGPHC3nSostnG6J9fDt", 68.75, 31.85),
    _e(C100, "Linf", "Chen2024Data_WRN_34_10", _wrn(34, 10), "none",
       "1-N5a0Z9o-8-oIrF4_EaVFVOOPI5-D-H2", 64.32, 31.13),
    _e(C100, "Linf", "Jia2022LAS-AT_34_10", _wrn(34, 10, sub_block1=True), "none",
       "1-338K2PUf5FTwk4cbUUeTNz247GrXaMG", 64.89, 30.77),
    _e(C100, "Linf", "Chen2021LTD_WRN34_10", _wrn(34, 10, sub_block1=True), "none",
       "1-I4NZyULdEWH46b4EaCTxuuRo4eFXsg_", 64.07, 30.59),
    _e(C100, "Linf", "Addepalli2021Towards_WRN34", _wrn(34, 10, sub_block1=True), "none",
       "1-9GAld_105-jWBLXL73btmfOCwAqvz7Y", 65.73, 30.35),
    _e(C100, "Linf", "Cui2020Learnable_34_10_LBGAT6", _wrn(34, 10, sub_block1=True), "none",
       "1TfIgvW3BAkL8jL9J7AAWFSLW3SSzJ2AE", 60.64, 29.33, eps="0.031"),
    _e(C100, "Linf", "Sitawarin2020Improving", _wrn(34, 10, sub_block1=True), "none",
       "1hbpwans776KM1SMbOxISkDx0KR0DW8EN", 62.82, 24.57),
    _e(C100, "Linf", "Addepalli2022Efficient_RN18", _R18, "none",
       "1-2hnxC7lZOQDqQbum4yPbtRtTND86I5N", 65.45, 27.67),
    _e(C100, "Linf", "Addepalli2021Towards_PARN18", _PREACT, "none",
       "1-FwVya1sDvdFXr0_ZBoXEJW9ukGC7hPK", 62.02, 27.14),
    _e(C100, "Linf", "Rice2020Overfitting", _PREACT, "rice100",
       "1XXNZn3fZBOkD1aqNL1cvcD8zZDccyAZ6", 53.83, 18.95),
)  # fmt: skip
