"""XLA's buffer sizes for one vit_flax training step (forward, cross-entropy, backward, AdamW update).

``python bench/xla_memory.py --arch vit --size 512 --batch 2`` compiles the step the bench times (ViT-S/16
dims, the state donated) and prints ``compiled.memory_analysis()``: the temporaries are what the step needs
on top of its arguments (parameters, optimizer state, inputs). The figure is the compiler's plan, exact and
repeatable, unlike a resident-set measurement.
"""

from __future__ import annotations

import argparse
import importlib

import jax
import jax.numpy as jnp
import optax
from flax import nnx

VIT_S = dict(dim=384, depth=12, heads=6, mlp_dim=1536, dim_head=64)
ARCHS = {"vit": "vit_flax.vit:ViT", "simple_vit": "vit_flax.simple_vit:SimpleViT"}


def training_step_memory(arch: str, size: int, batch: int, patch: int = 16) -> dict[str, float]:
    """MiB of temporaries, arguments and outputs XLA plans for one training step."""
    module, name = ARCHS[arch].split(":")
    cls = getattr(importlib.import_module(module), name)
    model = cls(image_size=size, patch_size=patch, num_classes=1000, **VIT_S, rngs=nnx.Rngs(0))
    model.train()
    optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def step(state: nnx.State, x: jax.Array, y: jax.Array) -> tuple[nnx.State, jax.Array]:
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model: nnx.Module) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    analysis = jax.jit(step, donate_argnums=0).lower(state, x, y).compile().memory_analysis()
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
