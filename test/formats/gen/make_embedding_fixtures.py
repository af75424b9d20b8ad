#!/usr/bin/env python3
"""Writes the embedding fixtures in test/fixtures/embeddings/ without torch.

torch.save = the standard pickle.Pickler (protocol 2) with a persistent_id hook,
inside a zip written by PyTorch's miniz. We reproduce both here:
  * stand-in `torch`, `torch._utils` and `torch.nn.modules.container` modules so
    Python's own pickler emits exactly the GLOBAL/REDUCE/BINPERSID stream that
    torch's tensors, Parameters and ParameterDicts reduce to;
  * a zip writer laid out like PyTorchStreamWriter: records under "<stem>/",
    STORED, data aligned to 64 bytes via an "FB" extra field, zeroed sizes in the
    local header plus a data descriptor, and a zip64 end record before the EOCD.
Hostile fixtures are built with the real `os`/`builtins`/`subprocess` objects, so
the pickles are exactly what an attacker's Python would produce.

Run from the repository root:  python3 test/formats/gen/make_embedding_fixtures.py
"""
import collections
import json
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile
import zlib

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), '..', '..', 'fixtures', 'embeddings')


# ---------------------------------------------------------------- stand-in torch

def _module(name):
    m = types.ModuleType(name)
    sys.modules[name] = m
    return m


torch = _module('torch')
torch_utils = _module('torch._utils')
torch._utils = torch_utils
_module('torch.nn')
_module('torch.nn.modules')
container = _module('torch.nn.modules.container')


def _named(fn, module, name):
    fn.__module__ = module
    fn.__qualname__ = name
    fn.__name__ = name
    return fn


def _rebuild_tensor_v2(*a):
    raise RuntimeError('never called')


def _rebuild_parameter(*a):
    raise RuntimeError('never called')


torch_utils._rebuild_tensor_v2 = _named(_rebuild_tensor_v2, 'torch._utils', '_rebuild_tensor_v2')
torch_utils._rebuild_parameter = _named(_rebuild_parameter, 'torch._utils', '_rebuild_parameter')

STORAGE_TYPES = {np.float32: 'FloatStorage', np.float16: 'HalfStorage', np.int64: 'LongStorage'}
for _n in STORAGE_TYPES.values():
    _cls = type(_n, (), {})
    _cls.__module__ = 'torch'
    _cls.__qualname__ = _n
    setattr(torch, _n, _cls)


class ParameterDict:
    """Pickles like torch.nn.ParameterDict: NEWOBJ + BUILD with the module __dict__."""


ParameterDict.__module__ = 'torch.nn.modules.container'
ParameterDict.__qualname__ = 'ParameterDict'
container.ParameterDict = ParameterDict


class Storage:
    def __init__(self, key, array, location='cpu'):
        self.key, self.array, self.location = key, np.ascontiguousarray(array).reshape(-1), location
        self.type = getattr(torch, STORAGE_TYPES[self.array.dtype.type])


class Tensor:
    def __init__(self, storage, offset, size, stride, requires_grad=False):
        self.storage, self.offset, self.size, self.stride, self.requires_grad = storage, offset, size, stride, requires_grad

    def __reduce_ex__(self, proto):
        # torch/_tensor.py _reduce_ex_internal for a plain CPU/CUDA tensor.
        return (torch_utils._rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), self.requires_grad, collections.OrderedDict()))


class Parameter:
    def __init__(self, tensor, requires_grad=True):
        self.tensor, self.requires_grad = tensor, requires_grad

    def __reduce_ex__(self, proto):
        return (torch_utils._rebuild_parameter, (self.tensor, self.requires_grad, collections.OrderedDict()))


def contiguous(storage, shape, offset=0):
    stride, acc = [], 1
    for s in reversed(shape):
        stride.insert(0, acc)
        acc *= s
    return Tensor(storage, offset, shape, stride)


def torch_pickle(obj, protocol=2):
    storages = {}

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                storages[o.key] = o
                return ('storage', o.type, o.key, o.location, o.array.size)
            return None

    import io
    buf = io.BytesIO()
    P(buf, protocol=protocol).dump(obj)
    return buf.getvalue(), storages


# ---------------------------------------------------------------- PyTorch-style zip

def torch_zip(records, prefix, zip64_eocd_only=False, zip64_entry=None):
    """records: [(name, bytes)]. zip64_eocd_only: saturate the classic EOCD so a
    reader must follow the zip64 locator. zip64_entry: name whose central entry
    stores its sizes/offset in a zip64 extra field."""
    out = bytearray()
    central = bytearray()
    for name, data in records:
        full = f'{prefix}/{name}'.encode()
        off = len(out)
        start = off + 30 + len(full) + 4
        pad = (64 - start % 64) % 64
        extra = b'FB' + struct.pack('<H', pad) + b'Z' * pad
        crc = zlib.crc32(data) & 0xffffffff
        flags = 0x0808  # data descriptor + UTF-8 names, as miniz writes
        out += struct.pack('<IHHHHHIIIHH', 0x04034b50, 0, flags, 0, 0, 0, 0, 0, 0, len(full), len(extra))
        out += full + extra
        assert len(out) % 64 == 0
        out += data
        out += struct.pack('<IIII', 0x08074b50, crc, len(data), len(data))
        if name == zip64_entry:
            cextra = struct.pack('<HHQQQ', 1, 24, len(data), len(data), off)
            central += struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 0x031e, 45, flags, 0, 0, 0, crc,
                                   0xffffffff, 0xffffffff, len(full), len(cextra), 0, 0, 0, 0, 0xffffffff)
            central += full + cextra
        else:
            central += struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 0x031e, 20, flags, 0, 0, 0, crc,
                                   len(data), len(data), len(full), 0, 0, 0, 0, 0, off)
            central += full
    cd_off = len(out)
    out += central
    n = len(records)
    eocd64_off = len(out)
    out += struct.pack('<IQHHIIQQQQ', 0x06064b50, 44, 0x031e, 45, 0, 0, n, n, len(central), cd_off)
    out += struct.pack('<IIQI', 0x07064b50, 0, eocd64_off, 1)
    if zip64_eocd_only:
        out += struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, 0xffff, 0xffff, 0xffffffff, 0xffffffff, 0)
    else:
        out += struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, n, n, len(central), cd_off, 0)
    return bytes(out)


def torch_save(path, obj, layout='new', prefix=None, byteorder='little', **zip_kw):
    """layout 'new' = torch >= 2.1 (byteorder, .format_version, version at the end);
    'old' = torch 1.6–2.0 (version first, no byteorder record). byteorder='big' is what
    torch.save writes on a big-endian host (s390x)."""
    pkl, storages = torch_pickle(obj)
    if prefix is None:
        prefix = os.path.splitext(os.path.basename(path))[0]
    order = '<' if byteorder == 'little' else '>'
    data = [(f'data/{k}', storages[k].array.astype(storages[k].array.dtype.newbyteorder(order)).tobytes()) for k in sorted(storages)]
    if layout == 'new':
        records = [('data.pkl', pkl), ('.format_version', b'1'), ('.storage_alignment', b'64'), ('byteorder', byteorder.encode())]
        records += data + [('version', b'3\n'), ('.data/serialization_id', b'1234567890123456789012345678901234567890')]
    else:
        records = [('version', b'3\n'), ('data.pkl', pkl)] + data
    with open(path, 'wb') as f:
        f.write(torch_zip(records, prefix, **zip_kw))


def plain_zip(path, prefix, records, compression):
    with zipfile.ZipFile(path, 'w', compression=compression) as z:
        for name, data in records:
            info = zipfile.ZipInfo(f'{prefix}/{name}', date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
            info.compress_type = compression
            z.writestr(info, data)


def safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header['__metadata__'] = metadata
    for name, (dtype, arr) in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {'dtype': dtype, 'shape': list(arr.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))


# ---------------------------------------------------------------- values

def ramp(n, d, scale=0.01, bias=-0.3):
    """v[i, j] = (i*d + j)*scale + bias, as float32: the tests recompute it."""
    i = np.arange(n * d, dtype=np.float64)
    return (i * scale + bias).astype(np.float32).reshape(n, d)


def main():
    os.makedirs(OUT, exist_ok=True)
    p = lambda name: os.path.join(OUT, name)

    # A1111 textual_inversion.py save(): string_to_param['*'] is the trained vec (requires_grad).
    vec = ramp(2, 16)
    t = contiguous(Storage('0', vec), [2, 16])
    t.requires_grad = True
    torch_save(p('a1111-style.pt'), {
        'string_to_token': {'*': 265},
        'string_to_param': {'*': t},
        'name': 'a1111-style',
        'step': 1500,
        'sd_checkpoint': 'cc6cb27103',
        'sd_checkpoint_name': 'v1-5-pruned-emaonly',
    })

    # fp16 storage, older archive layout written to a stream ("archive/" prefix), and
    # a classic EOCD that only points at the zip64 record; data/0 uses a zip64 extra field.
    half = (np.arange(3 * 8, dtype=np.float64) / 64.0 - 0.15625).astype(np.float16).reshape(3, 8)
    torch_save(p('a1111-fp16.pt'), {
        'string_to_token': {'*': 265},
        'string_to_param': {'*': contiguous(Storage('0', half), [3, 8])},
        'name': 'fp16-embedding', 'step': None, 'sd_checkpoint': None, 'sd_checkpoint_name': None,
    }, layout='old', prefix='archive', zip64_eocd_only=True, zip64_entry='data/0')

    # Written on a big-endian machine: the byteorder record says so and storages are big-endian.
    torch_save(p('a1111-bigendian.pt'), {
        'string_to_param': {'*': contiguous(Storage('0', half), [3, 8])}, 'name': 'big-endian',
    }, byteorder='big')

    # Non-contiguous view: storage holds the [D, N] transpose; the tensor is [N, D] with stride (1, N).
    tr = np.ascontiguousarray(ramp(2, 16).T)  # [16, 2]
    torch_save(p('a1111-transposed.pt'), {
        'string_to_token': {'*': 265},
        'string_to_param': {'*': Tensor(Storage('0', tr), 0, [2, 16], [1, 2])},
        'name': 'transposed',
    })

    # diffusers textual_inversion.py on CPU: weight[min:max+1].detach().cpu() is a view, so
    # torch.save writes the whole embedding matrix and an offset into it.
    matrix = ramp(10, 16, scale=0.001, bias=1.0)
    matrix[8:10] = ramp(2, 16)
    torch_save(p('learned_embeds.bin'), {'<cat-toy>': contiguous(Storage('0', matrix), [2, 16], offset=8 * 16)})

    # Older diffusers saved weight[placeholder_token_id]: a 1-D [D] view. Re-zipped with
    # Python's zipfile using DEFLATE, which torch.load also accepts.
    pkl, st = torch_pickle({'<old-token>': Tensor(Storage('0', matrix), 9 * 16, [16], [1])})
    plain_zip(p('learned_embeds-1d.bin'), 'learned_embeds-1d',
              [('data.pkl', pkl), ('data/0', st['0'].array.tobytes()), ('version', b'3\n')], zipfile.ZIP_DEFLATED)

    # Original textual_inversion repo (rinongal): ParameterDict module, a 0-d int64 token
    # tensor viewing a CUDA batch at offset 1, parameters saved from cuda:0.
    pd = ParameterDict()
    pd.__dict__.update({
        'training': True,
        '_parameters': collections.OrderedDict([('*', Parameter(contiguous(Storage('1', ramp(1, 16), 'cuda:0'), [1, 16])))]),
        '_buffers': collections.OrderedDict(),
        '_non_persistent_buffers_set': set(),
        '_backward_hooks': collections.OrderedDict(),
        '_forward_hooks': collections.OrderedDict(),
        '_forward_pre_hooks': collections.OrderedDict(),
        '_state_dict_hooks': collections.OrderedDict(),
        '_load_state_dict_pre_hooks': collections.OrderedDict(),
        '_modules': collections.OrderedDict(),
        '_keys': {'*': None},
    })
    tokens = np.array([49406, 265, 49407], dtype=np.int64)
    torch_save(p('original-repo.pt'), {
        'string_to_token': {'*': Tensor(Storage('0', tokens, 'cuda:0'), 1, [], [])},
        'string_to_param': pd,
    })

    # A training checkpoint, not an embedding: must be refused with the keys it has.
    torch_save(p('not-an-embedding.pt'), {'epoch': 3, 'global_step': 2 ** 70, 'lr': 0.005})

    # safetensors variants
    safetensors(p('learned_embeds.safetensors'), {'<cat-toy>': ('F32', ramp(2, 16))}, {'format': 'pt'})
    safetensors(p('diffusers-1d.safetensors'), {'<one>': ('F32', ramp(1, 16).reshape(16))})
    safetensors(p('kohya-style.safetensors'), {'emb_params': ('F16', half)}, {'name': 'kohya-style', 'ss_output_name': 'kohya-style'})
    safetensors(p('sdxl.safetensors'), {'clip_g': ('F32', ramp(2, 12)), 'clip_l': ('F32', ramp(2, 8))})
    safetensors(p('two-tokens.safetensors'), {'<a>': ('F32', ramp(1, 16)), '<b>': ('F32', ramp(1, 16))})
    safetensors(p('sd2-1024.safetensors'), {'emb_params': ('F32', ramp(1, 1024, scale=1e-4))})

    # ---- SDXL: one word, vectors for both text encoders (clip_l: CLIP ViT-L, clip_g: OpenCLIP ViT-bigG).
    # Real files are [N, 768] + [N, 1280]; the fixtures keep the layout with tiny widths (8 and 12).
    sdxl_l, sdxl_g = ramp(2, 8), ramp(2, 12, scale=0.02, bias=-0.5)

    # kohya sdxl_train_textual_inversion.py, --save_precision fp16: save_file({"clip_l", "clip_g"},
    # metadata) where the metadata is only its model-spec block (train_util.get_sai_model_spec).
    half_l = (np.arange(2 * 8, dtype=np.float64) / 64.0 - 0.15625).astype(np.float16).reshape(2, 8)
    half_g = (np.arange(2 * 12, dtype=np.float64) / 64.0 - 0.15625).astype(np.float16).reshape(2, 12)
    safetensors(p('sdxl-kohya.safetensors'), {'clip_g': ('F16', half_g), 'clip_l': ('F16', half_l)}, {
        'modelspec.sai_model_spec': '1.0.1',
        'modelspec.architecture': 'stable-diffusion-xl-v1-base/textual-inversion',
        'modelspec.implementation': 'https://github.com/Stability-AI/generative-models',
        'modelspec.title': 'my-sdxl-word',
        'modelspec.resolution': '1024x1024',
        'modelspec.date': '2025-01-01T00:00:00',
        'modelspec.prediction_type': 'epsilon',
        'modelspec.implementation_version': 'sd-scripts/unknown',
    })
    # The same script with a .pt output name: torch.save of the plain dict (no metadata).
    torch_save(p('sdxl-kohya.pt'), {
        'clip_l': contiguous(Storage('0', sdxl_l), [2, 8]),
        'clip_g': contiguous(Storage('1', sdxl_g), [2, 12]),
    })
    # Converters and UIs that add scalar entries next to the tensors (A1111 forks keep only tensors).
    torch_save(p('sdxl-with-info.pt'), {
        'clip_g': contiguous(Storage('0', sdxl_g), [2, 12]),
        'clip_l': contiguous(Storage('1', sdxl_l), [2, 8]),
        'name': 'sdxl-info', 'step': 2000,
    })
    # Broken SDXL archives: different vector counts, and a clip_l that is not a tensor.
    torch_save(p('sdxl-count-mismatch.pt'), {
        'clip_l': contiguous(Storage('0', sdxl_l), [2, 8]),
        'clip_g': contiguous(Storage('1', ramp(3, 12)), [3, 12]),
    })
    torch_save(p('sdxl-not-a-tensor.pt'), {'clip_l': 'not a tensor', 'clip_g': contiguous(Storage('0', sdxl_g), [2, 12])})

    # diffusers textual_inversion_sdxl.py: save_progress() writes {placeholder_token: weight[ids]} with
    # metadata {"format": "pt"} once per text encoder: learned_embeds.safetensors (text_encoder) and
    # learned_embeds_2.safetensors (text_encoder_2); every --save_steps also
    # learned_embeds-steps-S.safetensors and learned_embeds_2-steps-S.safetensors.
    pair = os.path.join(OUT, 'sdxl-diffusers')
    os.makedirs(pair, exist_ok=True)
    q = lambda name: os.path.join(pair, name)
    safetensors(q('learned_embeds.safetensors'), {'<cat-toy>': ('F32', sdxl_l)}, {'format': 'pt'})
    safetensors(q('learned_embeds_2.safetensors'), {'<cat-toy>': ('F32', sdxl_g)}, {'format': 'pt'})
    safetensors(q('learned_embeds-steps-500.safetensors'), {'<cat-toy>': ('F32', ramp(2, 8, scale=0.001))}, {'format': 'pt'})
    safetensors(q('learned_embeds_2-steps-500.safetensors'), {'<cat-toy>': ('F32', ramp(2, 12, scale=0.001))}, {'format': 'pt'})

    # ---- hostile archives: torch layout, malicious data.pkl
    class Evil:
        def __init__(self, fn, *args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return (self.fn, self.args)

    marker = '/tmp/oneword-pickle-pwned'
    hostile = {
        'hostile-os-system.pt': (Evil(os.system, f'touch {marker}'), 2),
        'hostile-exec.bin': ({'<tok>': Evil(exec, f"open('{marker}','w').write('x')")}, 4),
        'hostile-subprocess.pt': ({'string_to_param': {'*': Evil(subprocess.Popen, ['touch', marker])}, 'name': 'x'}, 3),
        'hostile-sdxl.pt': ({'clip_l': Evil(os.system, f'touch {marker}'), 'clip_g': Evil(os.system, f'touch {marker}')}, 2),
    }
    for name, (obj, proto) in hostile.items():
        pkl, _ = torch_pickle(obj, protocol=proto)
        with open(p(name), 'wb') as f:
            f.write(torch_zip([('data.pkl', pkl), ('byteorder', b'little'), ('version', b'3\n')], os.path.splitext(name)[0]))

    # Tensor rebuild whose storage type is a dangerous global instead of a torch storage class.
    pkl = (b'\x80\x02}q\x00X\x05\x00\x00\x00<tok>q\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02('
           b'(X\x07\x00\x00\x00storageq\x03cposix\nsystem\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x10tq\x07'
           b'QK\x00K\x10\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rq\x08tq\tRq\ns.')
    with open(p('hostile-storage-type.pt'), 'wb') as f:
        f.write(torch_zip([('data.pkl', pkl), ('data/0', b'\0' * 64), ('version', b'3\n')], 'hostile-storage-type'))


if __name__ == '__main__':
    main()
