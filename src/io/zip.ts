// A small, defensive ZIP reader: enough for PyTorch's `torch.save` archives
// (STORED entries, 64-byte aligned data, data descriptors, a zip64 end record)
// and ordinary DEFLATE archives. Everything read from the file is treated as
// hostile: every offset and length is bounds-checked before use, CRCs are
// verified, and decompression is capped at the declared size.
import { openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { inflateRawSync } from 'node:zlib';
import { OnewordError } from '../errors.ts';

export class ZipError extends OnewordError {
  override name = 'ZipError';
}

export interface ZipEntry {
  name: string;
  /** 0 = STORED, 8 = DEFLATE; anything else is refused at read time. */
  method: number;
  flags: number;
  crc32: number;
  compressedSize: number;
  uncompressedSize: number;
  localHeaderOffset: number;
}

export interface ZipLimits {
  /** Largest central directory we are willing to parse, in bytes. */
  maxCentralDirectoryBytes: number;
  maxEntries: number;
  /** Largest entry `read()` will materialise, in bytes. */
  maxEntryBytes: number;
}

const DEFAULT_LIMITS: ZipLimits = {
  maxCentralDirectoryBytes: 16 << 20,
  maxEntries: 100_000,
  maxEntryBytes: 2 ** 31 - 1,
};

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_EOCD64 = 0x06064b50;
const SIG_EOCD64_LOCATOR = 0x07064b50;
const EOCD_SIZE = 22;
const LOCAL_HEADER_SIZE = 30;
const CENTRAL_HEADER_SIZE = 46;

/** Random access to the archive bytes: a file descriptor or an in-memory buffer. */
interface Source {
  readonly size: number;
  read(pos: number, len: number): Uint8Array;
  close(): void;
}

function bufferSource(buf: Uint8Array): Source {
  return {
    size: buf.length,
    // A plain Uint8Array copy: callers get the same type from either source, and cannot alias the input.
    read: (pos, len) => new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength).slice(pos, pos + len),
    close: () => {},
  };
}

function fileSource(path: string): Source {
  const fd = openSync(path, 'r');
  let open = true;
  const size = fstatSync(fd).size;
  return {
    size,
    read(pos, len) {
      if (!open) throw new ZipError(`${path}: archive is closed`);
      const out = new Uint8Array(len);
      let done = 0;
      while (done < len) {
        const n = readSync(fd, out, done, len - done, pos + done);
        if (n === 0) throw new ZipError(`${path}: unexpected end of file`);
        done += n;
      }
      return out;
    },
    close() {
      if (open) { open = false; closeSync(fd); }
    },
  };
}

let CRC_TABLE: Uint32Array | undefined;

/** CRC-32 (IEEE 802.3, as used by ZIP and PNG). Pass a previous result to continue. */
export function crc32(data: Uint8Array, previous = 0): number {
  if (!CRC_TABLE) {
    CRC_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c >>> 0;
    }
  }
  let c = (previous ^ 0xffffffff) >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function u16(b: Uint8Array, o: number): number { return b[o] | (b[o + 1] << 8); }
function u32(b: Uint8Array, o: number): number { return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0; }
function u64(b: Uint8Array, o: number, what: string, label: string): number {
  const lo = u32(b, o);
  const hi = u32(b, o + 4);
  // Offsets beyond 2^53 cannot be addressed in JS (and no real file is that big).
  if (hi >= 0x200000) throw new ZipError(`${label}: ${what} is too large`);
  return hi * 0x1_0000_0000 + lo;
}

export class ZipArchive {
  /** Entries in central-directory order. */
  readonly entries = new Map<string, ZipEntry>();
  /** Where the central directory starts: entry data must end before it. */
  private dataEnd = 0;
  private constructor(private readonly src: Source, readonly label: string, private readonly limits: ZipLimits) {}

  static open(path: string, limits: Partial<ZipLimits> = {}): ZipArchive {
    const src = fileSource(path);
    try {
      const z = new ZipArchive(src, path, { ...DEFAULT_LIMITS, ...limits });
      z.parseDirectory();
      return z;
    } catch (e) {
      src.close();
      throw e;
    }
  }

  static fromBuffer(buf: Uint8Array, label = '<buffer>', limits: Partial<ZipLimits> = {}): ZipArchive {
    const z = new ZipArchive(bufferSource(buf), label, { ...DEFAULT_LIMITS, ...limits });
    z.parseDirectory();
    return z;
  }

  get names(): string[] { return [...this.entries.keys()]; }
  has(name: string): boolean { return this.entries.has(name); }
  close(): void { this.src.close(); }

  entry(name: string): ZipEntry {
    const e = this.entries.get(name);
    if (!e) throw new ZipError(`${this.label}: no entry "${name}" in archive`);
    return e;
  }

  /** Whole entry contents, decompressed and CRC-checked. */
  read(name: string): Uint8Array {
    const e = this.entry(name);
    if (e.uncompressedSize > this.limits.maxEntryBytes) {
      throw new ZipError(`${this.label}: entry "${name}" is ${e.uncompressedSize} bytes, over the ${this.limits.maxEntryBytes}-byte limit`);
    }
    const start = this.dataStart(e);
    const raw = this.src.read(start, e.compressedSize);
    let out: Uint8Array;
    if (e.method === 0) {
      out = raw;
    } else {
      try {
        // maxOutputLength stops a zip bomb at the size the directory promised.
        const b = inflateRawSync(raw, { maxOutputLength: Math.max(1, e.uncompressedSize) });
        out = new Uint8Array(b.buffer, b.byteOffset, b.length);
      } catch (err) {
        throw new ZipError(`${this.label}: entry "${name}" does not inflate: ${(err as Error).message}`);
      }
      if (out.length !== e.uncompressedSize) {
        throw new ZipError(`${this.label}: entry "${name}" inflates to ${out.length} bytes, directory says ${e.uncompressedSize}`);
      }
    }
    if (crc32(out) !== e.crc32) throw new ZipError(`${this.label}: entry "${name}" fails its CRC check`);
    return out;
  }

  /**
   * Bytes [start, start+length) of an entry's uncompressed contents. For STORED
   * entries only that range is read from disk (no CRC check is possible on a
   * part); compressed entries are inflated whole.
   */
  readRange(name: string, start: number, length: number): Uint8Array {
    const e = this.entry(name);
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(length) || start < 0 || length < 0 || start + length > e.uncompressedSize) {
      throw new ZipError(`${this.label}: range [${start}, ${start + length}) is outside entry "${name}" (${e.uncompressedSize} bytes)`);
    }
    if (e.method !== 0) return this.read(name).slice(start, start + length);
    return this.src.read(this.dataStart(e) + start, length);
  }

  private fail(msg: string): never { throw new ZipError(`${this.label}: ${msg}`); }

  private parseDirectory(): void {
    const size = this.src.size;
    if (size < EOCD_SIZE) this.fail('too small to be a zip archive');
    // The end record sits in the last 22 + (comment ≤ 65535) bytes.
    const tailLen = Math.min(size, EOCD_SIZE + 0xffff);
    const tailStart = size - tailLen;
    const tail = this.src.read(tailStart, tailLen);
    let eocd = -1;
    for (let i = tail.length - EOCD_SIZE; i >= 0; i--) {
      if (u32(tail, i) === SIG_EOCD && i + EOCD_SIZE + u16(tail, i + 20) === tail.length) { eocd = i; break; }
    }
    if (eocd < 0) this.fail('no end-of-central-directory record (not a zip archive, or truncated)');
    const diskNo = u16(tail, eocd + 4);
    const cdDisk = u16(tail, eocd + 6);
    let entriesOnDisk = u16(tail, eocd + 8);
    let count = u16(tail, eocd + 10);
    let cdSize = u32(tail, eocd + 12);
    let cdOffset = u32(tail, eocd + 16);

    if (count === 0xffff || entriesOnDisk === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff || diskNo === 0xffff || cdDisk === 0xffff) {
      // zip64: the real values live in the zip64 end record, found via its locator.
      const locPos = tailStart + eocd - 20;
      if (locPos < 0) this.fail('zip64 end-of-central-directory locator missing');
      const loc = this.src.read(locPos, 20);
      if (u32(loc, 0) !== SIG_EOCD64_LOCATOR) this.fail('zip64 end-of-central-directory locator missing');
      if (u32(loc, 4) !== 0 || u32(loc, 16) > 1) this.fail('multi-disk zip archives are not supported');
      const recPos = u64(loc, 8, 'zip64 record offset', this.label);
      if (recPos + 56 > locPos) this.fail('zip64 end-of-central-directory record out of bounds');
      const rec = this.src.read(recPos, 56);
      if (u32(rec, 0) !== SIG_EOCD64) this.fail('zip64 end-of-central-directory record has a bad signature');
      if (u32(rec, 16) !== 0 || u32(rec, 20) !== 0) this.fail('multi-disk zip archives are not supported');
      entriesOnDisk = u64(rec, 24, 'entry count', this.label);
      count = u64(rec, 32, 'entry count', this.label);
      cdSize = u64(rec, 40, 'central directory size', this.label);
      cdOffset = u64(rec, 48, 'central directory offset', this.label);
    } else if (diskNo !== 0 || cdDisk !== 0) {
      this.fail('multi-disk zip archives are not supported');
    }
    if (entriesOnDisk !== count) this.fail('multi-disk zip archives are not supported');
    if (count > this.limits.maxEntries) this.fail(`${count} entries exceeds the limit of ${this.limits.maxEntries}`);
    if (cdSize > this.limits.maxCentralDirectoryBytes) this.fail(`central directory of ${cdSize} bytes exceeds the limit`);
    if (cdOffset + cdSize > size) this.fail('central directory lies outside the file');

    this.dataEnd = cdOffset;
    const cd = this.src.read(cdOffset, cdSize);
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + CENTRAL_HEADER_SIZE > cd.length) this.fail(`central directory truncated at entry ${i}`);
      if (u32(cd, p) !== SIG_CENTRAL) this.fail(`central directory entry ${i} has a bad signature`);
      const flags = u16(cd, p + 8);
      const method = u16(cd, p + 10);
      const crc = u32(cd, p + 16);
      let compressedSize = u32(cd, p + 20);
      let uncompressedSize = u32(cd, p + 24);
      const nameLen = u16(cd, p + 28);
      const extraLen = u16(cd, p + 30);
      const commentLen = u16(cd, p + 32);
      const diskStart = u16(cd, p + 34);
      let localHeaderOffset = u32(cd, p + 42);
      const end = p + CENTRAL_HEADER_SIZE + nameLen + extraLen + commentLen;
      if (end > cd.length) this.fail(`central directory entry ${i} runs past the directory`);
      const nameBytes = cd.subarray(p + CENTRAL_HEADER_SIZE, p + CENTRAL_HEADER_SIZE + nameLen);
      let name: string;
      try {
        name = new TextDecoder('utf-8', { fatal: true }).decode(nameBytes);
      } catch {
        this.fail(`central directory entry ${i} has a name that is not valid UTF-8`);
      }
      if (name.includes('\0')) this.fail(`entry ${i} has a NUL byte in its name`);
      // zip64 extra field (id 1): 8-byte values, present only for saturated fields, in this order.
      if (uncompressedSize === 0xffffffff || compressedSize === 0xffffffff || localHeaderOffset === 0xffffffff || diskStart === 0xffff) {
        const extra = cd.subarray(p + CENTRAL_HEADER_SIZE + nameLen, p + CENTRAL_HEADER_SIZE + nameLen + extraLen);
        let q = 0;
        let found = false;
        while (q + 4 <= extra.length) {
          const id = u16(extra, q);
          const len = u16(extra, q + 2);
          if (q + 4 + len > extra.length) this.fail(`entry "${name}" has a malformed extra field`);
          if (id === 1) {
            found = true;
            let r = q + 4;
            const take = (what: string): number => {
              if (r + 8 > q + 4 + len) this.fail(`entry "${name}" has a short zip64 extra field`);
              const v = u64(extra, r, what, this.label);
              r += 8;
              return v;
            };
            if (uncompressedSize === 0xffffffff) uncompressedSize = take('uncompressed size');
            if (compressedSize === 0xffffffff) compressedSize = take('compressed size');
            if (localHeaderOffset === 0xffffffff) localHeaderOffset = take('local header offset');
            break;
          }
          q += 4 + len;
        }
        if (!found) this.fail(`entry "${name}" needs a zip64 extra field but has none`);
        if (diskStart === 0xffff) this.fail('multi-disk zip archives are not supported');
      } else if (diskStart !== 0) {
        this.fail('multi-disk zip archives are not supported');
      }
      if (this.entries.has(name)) this.fail(`duplicate entry "${name}"`);
      if (localHeaderOffset + LOCAL_HEADER_SIZE > cdOffset) this.fail(`entry "${name}" has its local header outside the data area`);
      this.entries.set(name, { name, method, flags, crc32: crc, compressedSize, uncompressedSize, localHeaderOffset });
      p = end;
    }
  }

  /** Offset of an entry's data, after validating its local header. */
  private dataStart(e: ZipEntry): number {
    if (e.flags & 0x1) this.fail(`entry "${e.name}" is encrypted`);
    if (e.method !== 0 && e.method !== 8) this.fail(`entry "${e.name}" uses compression method ${e.method}; only STORED (0) and DEFLATE (8) are supported`);
    if (e.method === 0 && e.compressedSize !== e.uncompressedSize) this.fail(`STORED entry "${e.name}" has different compressed and uncompressed sizes`);
    const h = this.src.read(e.localHeaderOffset, LOCAL_HEADER_SIZE);
    if (u32(h, 0) !== SIG_LOCAL) this.fail(`entry "${e.name}" has a bad local header signature`);
    const nameLen = u16(h, 26);
    const extraLen = u16(h, 28);
    // Sizes in the local header may be zero (data descriptor, as PyTorch writes), so the
    // central directory is authoritative; the name must still agree.
    const start = e.localHeaderOffset + LOCAL_HEADER_SIZE + nameLen + extraLen;
    const localName = this.src.read(e.localHeaderOffset + LOCAL_HEADER_SIZE, nameLen);
    const expected = new TextEncoder().encode(e.name);
    if (localName.length !== expected.length || localName.some((b, i) => b !== expected[i])) {
      this.fail(`entry "${e.name}": local header names a different file`);
    }
    if (start + e.compressedSize > this.dataEnd) this.fail(`entry "${e.name}" data runs past the end of the data area`);
    return start;
  }
}
