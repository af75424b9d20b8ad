#!/usr/bin/env python3
"""Reference images for test/formats/images.test.ts, computed with Pillow + numpy.

  resize.json     Pillow's Image.resize output for each filter diffusers offers
  pipeline/*.f32  diffusers' TextualInversionDataset pixel_values for small inputs
                  (RGB, RGBA, LA, palette+tRNS, JPEG, WebP, EXIF-rotated JPEG)

Needs Pillow and numpy (Debian: apt-get install python3-pil python3-numpy, then run
with /usr/bin/python3). Run from the repository root:
    /usr/bin/python3 test/formats/gen/make_image_fixtures.py
"""
import base64
import json
import os

import numpy as np
import PIL
from PIL import Image, ImageOps

OUT = os.path.join(os.path.dirname(__file__), '..', '..', 'fixtures', 'images')
FILTERS = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR, 'linear': Image.BILINEAR,
           'lanczos': Image.LANCZOS, 'nearest': Image.NEAREST}


def pattern(w, h, seed):
    """Edges, gradients and noise: exercises ringing/clipping in the resamplers."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), dtype=np.float64)
    img[..., 0] = 255 * x / max(w - 1, 1)
    img[..., 1] = np.where((x // 4 + y // 3) % 2 == 0, 250, 5)
    img[..., 2] = rng.randint(0, 256, size=(h, w))
    return img.clip(0, 255).astype(np.uint8)


def diffusers_pixel_values(path, size, center_crop, interpolation='bicubic', exif_transpose=False):
    """examples/textual_inversion/textual_inversion.py, TextualInversionDataset.__getitem__ (flip_p=0)."""
    image = Image.open(path)
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    if not image.mode == 'RGB':
        image = image.convert('RGB')
    img = np.array(image).astype(np.uint8)
    if center_crop:
        crop = min(img.shape[0], img.shape[1])
        h, w = img.shape[0], img.shape[1]
        img = img[(h - crop) // 2: (h + crop) // 2, (w - crop) // 2: (w + crop) // 2]
    image = Image.fromarray(img)
    image = image.resize((size, size), resample=FILTERS[interpolation])
    image = np.array(image).astype(np.uint8)
    image = (image / 127.5 - 1.0).astype(np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def main():
    os.makedirs(os.path.join(OUT, 'pipeline'), exist_ok=True)
    p = lambda *n: os.path.join(OUT, *n)

    src = pattern(37, 23, 0)
    Image.fromarray(src).save(p('src-rgb.png'))

    cases = []
    for name in ['bicubic', 'bilinear', 'lanczos', 'nearest']:
        for (ow, oh) in [(16, 16), (50, 41), (37, 12), (11, 23), (5, 3)]:
            out = np.array(Image.fromarray(src).resize((ow, oh), resample=FILTERS[name]))
            cases.append({'filter': name, 'width': ow, 'height': oh, 'rgb': base64.b64encode(out.tobytes()).decode()})
    with open(p('resize.json'), 'w') as f:
        json.dump({'pillow': PIL.__version__, 'source': 'src-rgb.png', 'cases': cases}, f, indent=0)

    # RGBA whose fully transparent pixels still carry colour: convert("RGB") keeps it.
    rgba = np.dstack([pattern(30, 30, 1), (np.arange(900).reshape(30, 30) * 7 % 256).astype(np.uint8)])
    Image.fromarray(rgba, 'RGBA').save(p('rgba.png'))
    la = np.dstack([pattern(25, 31, 2)[..., 2], np.full((31, 25), 128, np.uint8)])
    Image.fromarray(la, 'LA').save(p('gray-alpha.png'))
    pal = Image.fromarray(pattern(20, 20, 3)).quantize(colors=16)
    pal.info['transparency'] = 3
    pal.save(p('palette.png'), transparency=3)
    Image.fromarray(pattern(40, 24, 4)).save(p('photo.jpg'), quality=90)
    Image.fromarray(pattern(24, 24, 5)).save(p('lossless.webp'), lossless=True)
    # A landscape JPEG tagged "rotate 90° CW to display" (EXIF orientation 6).
    rot = Image.fromarray(pattern(32, 20, 6))
    exif = rot.getexif()
    exif[0x0112] = 6
    rot.save(p('exif-rotated.jpg'), quality=95, exif=exif)

    pipeline = [
        ('src-rgb.png', 16, True, 'bicubic', False),
        ('src-rgb.png', 16, False, 'bicubic', False),
        ('src-rgb.png', 12, True, 'lanczos', False),
        ('src-rgb.png', 24, True, 'nearest', False),
        ('rgba.png', 20, True, 'bicubic', False),
        ('gray-alpha.png', 16, True, 'bilinear', False),
        ('palette.png', 12, False, 'bicubic', False),
        ('photo.jpg', 16, True, 'bicubic', False),
        ('lossless.webp', 16, True, 'bicubic', False),
        # Our loader applies EXIF orientation; the reference does too (diffusers would not).
        ('exif-rotated.jpg', 16, True, 'bicubic', True),
    ]
    index = []
    for name, size, crop, interp, exif_t in pipeline:
        arr = diffusers_pixel_values(p(name), size, crop, interp, exif_t)
        out = f'{os.path.splitext(name)[0]}-{size}-{"crop" if crop else "full"}-{interp}.f32'
        arr.astype('<f4').tofile(p('pipeline', out))
        index.append({'image': name, 'size': size, 'centerCrop': crop, 'interpolation': interp, 'expected': out})
    with open(p('pipeline', 'index.json'), 'w') as f:
        json.dump(index, f, indent=1)


if __name__ == '__main__':
    main()
