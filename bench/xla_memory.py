"""XLA's buffer sizes for one vit_flax training step (forward, cross-entropy, backward, AdamW update).

``python bench/xla_memory.py --arch vit --size 512 --batch 2`` compiles the step the bench times and
``vit_flax.train.fit`` runs (``vit_flax.train.training_step``; ViT-S/16 dims, the state donated) and
prints ``compiled.memory_analysis()``: the temporaries are what the step needs on top of its arguments
(parameters, optimizer state, inputs). The figure is the compiler's plan, exact and repeatable, unlike
a resident-set measurement.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from compare import Config, build_flax_model

from vit_flax.train import training_step

ARCHS = {"vit": "ViT", "simple_vit": "SimpleViT"}


def training_step_memory(arch: str, size: int, batch: int) -> dict[str, float]:
    """MiB of temporaries, arguments and outputs XLA plans for one training step of bench/compare.py."""
    cfg = Config(str(size), "", batch, (3, size, size), ())
    step, state = training_step(build_flax_model(f"vit_flax.{ARCHS[arch]}", cfg), weight_decay=1e-4)
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    lr, seed = jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)
    analysis = step.lower(state, x, y, lr, seed).compile().memory_analysis()
    mib = 2.0**20
    return {
        "temp_mib": analysis.temp_size_in_bytes / mib,
        "argument_mib": analysis.argument_size_in_bytes / mib,
        "output_mib": analysis.output_size_in_bytes / mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="vit")
    parser.add_argument("--size", type=int, default=224, help="image side (default 224)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    args = parser.parse_args()
    m = training_step_memory(args.arch, args.size, args.batch)
    print(
        f"{args.arch} ViT-S/16 {args.size}x{args.size} batch {args.batch}: temporaries {m['temp_mib']:.0f} MiB, "
        f"arguments {m['argument_mib']:.0f} MiB, outputs {m['output_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
