// PNG in/out for shapes-world images (sharp does the encoding).
import sharp from 'sharp';
import { IMAGE_SIZE, type RgbImage } from './render.ts';

export async function encodePng(img: RgbImage): Promise<Buffer> {
  return sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength), {
    raw: { width: img.width, height: img.height, channels: 3 },
  })
    .png()
    .toBuffer();
}

export async function writePng(img: RgbImage, path: string): Promise<void> {
  await sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength), {
    raw: { width: img.width, height: img.height, channels: 3 },
  })
    .png()
    .toFile(path);
}

/**
 * Reads any image sharp understands as 3-channel RGB. Transparency is flattened onto white;
 * with `size` (default 64) other sizes are resized to size×size (area averaging when shrinking).
 */
export async function readImage(input: string | Buffer, size: number | null = IMAGE_SIZE): Promise<RgbImage> {
  let s = sharp(input).flatten({ background: '#ffffff' }).removeAlpha().toColourspace('srgb');
  if (size !== null) {
    const meta = await sharp(input).metadata();
    if (meta.width !== size || meta.height !== size) s = s.resize(size, size, { fit: 'fill', kernel: 'lanczos3' });
  }
  const { data, info } = await s.raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`expected 3 channels after conversion, got ${info.channels}`);
  return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}
