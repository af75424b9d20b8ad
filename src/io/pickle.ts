// A restricted pickle reader for PyTorch checkpoints (`torch.save`: a zip holding
// data.pkl plus one raw record per storage).
//
// Python's unpickler resolves arbitrary globals and calls them, so loading an
// untrusted .pt/.bin with it runs code. This VM never calls anything from the
// file: it knows a fixed list of names (tensor rebuilding, storage types,
// OrderedDict, set, ParameterDict) and implements each one itself. Any other
// global, or an opcode that would import or call something, raises
// PickleSecurityError naming it. Data opcodes build plain JS values.
import { ZipArchive, ZipError } from './zip.ts';
import { OnewordError } from '../errors.ts';

export class PickleError extends OnewordError {
  override name = 'PickleError';
}

/** The pickle asked for something we refuse to do (import a global, call, build an object). */
export class PickleSecurityError extends PickleError {
  override name = 'PickleSecurityError';
}

export type TorchDType = 'float32' | 'float16' | 'bfloat16' | 'float64' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

export const DTYPE_SIZE: Readonly<Record<TorchDType, number>> = {
  float32: 4, float16: 2, bfloat16: 2, float64: 8, int64: 8, int32: 4, int16: 2, int8: 1, uint8: 1, bool: 1,
};

export class PyTuple {
  constructor(readonly items: readonly PyValue[]) {}
}

/** Dict keys we accept: hashable scalars only (embedding files use strings). */
export type PyKey = string | number | bigint | boolean | null;

export class PyDict {
  readonly map = new Map<PyKey, PyValue>();
  /** True for collections.OrderedDict (plain dicts keep insertion order too). */
  constructor(readonly ordered = false) {}
  get(key: PyKey): PyValue | undefined { return this.map.get(key); }
  has(key: PyKey): boolean { return this.map.has(key); }
  get size(): number { return this.map.size; }
}

export class PySet {
  readonly items = new Set<PyKey>();
  constructor(readonly frozen = false) {}
}

/** A reference to one of the whitelisted Python globals. */
export class PyGlobal {
  constructor(readonly module: string, readonly name: string, readonly spec: GlobalSpec) {}
  get qualifiedName(): string { return `${this.module}.${this.name}`; }
}

/** An instance of a whitelisted class made by NEWOBJ; BUILD may set its state once. */
export class PyObject {
  state: PyValue | undefined = undefined;
  constructor(readonly cls: PyGlobal) {}
}

/** A storage record in the archive (`data/<key>`); bytes are read only on demand. */
export class TorchStorage {
  constructor(readonly key: string, readonly dtype: TorchDType, readonly location: string, readonly numel: number) {}
}

export class TorchTensor {
  constructor(
    readonly storage: TorchStorage,
    readonly offset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
    readonly requiresGrad: boolean,
    readonly isParameter = false,
  ) {}
  get dtype(): TorchDType { return this.storage.dtype; }
  get numel(): number { return this.shape.reduce((a, b) => a * b, 1); }
}

export type PyValue =
  | null | boolean | number | bigint | string | Uint8Array
  | PyValue[] | PyTuple | PyDict | PySet | PyGlobal | PyObject | TorchStorage | TorchTensor;

export type GlobalSpec =
  | { kind: 'callable'; call: (args: readonly PyValue[], where: string) => PyValue }
  | { kind: 'storage'; dtype: TorchDType }
  | { kind: 'class' };

export interface PickleLimits {
  /** Largest pickle stream accepted. */
  maxBytes: number;
  /** Items on the stack, counting those under marks. */
  maxStack: number;
  /** Nesting of MARKs (lists/tuples/dicts being built). */
  maxMarkDepth: number;
  maxMemo: number;
  /** Longest string or bytes value. */
  maxStringBytes: number;
  /** Longest LONG1/LONG4 integer, in bytes. */
  maxIntBytes: number;
  maxTensorDims: number;
  /** Largest tensor storage (a `data/<key>` record) of a torch.save archive, in bytes, checked before it is read. */
  maxStorageBytes: number;
}

export const DEFAULT_PICKLE_LIMITS: PickleLimits = {
  maxBytes: 64 << 20,
  maxStack: 1 << 20,
  maxMarkDepth: 256,
  maxMemo: 1 << 20,
  maxStringBytes: 4 << 20,
  maxIntBytes: 64,
  maxTensorDims: 16,
  maxStorageBytes: 1 << 30,
};

export interface UnpickleOptions {
  /** Resolves BINPERSID ids (torch: storage references). Without it, BINPERSID is refused. */
  persistentLoad?: (pid: PyValue) => PyValue;
  /** Names the source in error messages. */
  label?: string;
  limits?: Partial<PickleLimits>;
}

// ---------------------------------------------------------------- whitelist

const STORAGE_TYPES: Array<[string, TorchDType]> = [
  ['FloatStorage', 'float32'], ['HalfStorage', 'float16'], ['BFloat16Storage', 'bfloat16'],
  ['DoubleStorage', 'float64'], ['LongStorage', 'int64'], ['IntStorage', 'int32'],
  ['ShortStorage', 'int16'], ['CharStorage', 'int8'], ['ByteStorage', 'uint8'], ['BoolStorage', 'bool'],
];

function isInt(v: PyValue | undefined): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v);
}

function intList(v: PyValue | undefined, what: string, where: string): number[] {
  const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : undefined;
  if (!items) throw new PickleError(`${where}: ${what} must be a tuple of integers, got ${describe(v)}`);
  return items.map((x) => {
    if (!isInt(x) || x < 0) throw new PickleError(`${where}: ${what} must hold non-negative integers, got ${describe(x)}`);
    return x;
  });
}

/** torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride[, requires_grad, hooks[, metadata]]). */
function rebuildTensor(args: readonly PyValue[], v2: boolean, where: string, maxDims: number): TorchTensor {
  const fn = v2 ? '_rebuild_tensor_v2' : '_rebuild_tensor';
  const okCount = v2 ? args.length === 6 || args.length === 7 : args.length === 4;
  if (!okCount) throw new PickleError(`${where}: ${fn} called with ${args.length} arguments`);
  const [storage, offset, size, stride, requiresGrad, hooks] = args;
  if (!(storage instanceof TorchStorage)) throw new PickleError(`${where}: ${fn} expects a storage, got ${describe(storage)}`);
  if (!isInt(offset) || offset < 0) throw new PickleError(`${where}: bad storage offset ${describe(offset)}`);
  const shape = intList(size, 'size', where);
  const strides = intList(stride, 'stride', where);
  if (shape.length !== strides.length) throw new PickleError(`${where}: size has ${shape.length} dims but stride has ${strides.length}`);
  if (shape.length > maxDims) throw new PickleError(`${where}: tensor has ${shape.length} dims (limit ${maxDims})`);
  if (v2) {
    if (typeof requiresGrad !== 'boolean') throw new PickleError(`${where}: requires_grad must be a bool, got ${describe(requiresGrad)}`);
    if (!(hooks instanceof PyDict)) throw new PickleError(`${where}: backward hooks must be an OrderedDict, got ${describe(hooks)}`);
  }
  let numel = 1;
  let last = offset;
  for (let i = 0; i < shape.length; i++) {
    numel *= shape[i];
    if (shape[i] > 0) last += (shape[i] - 1) * strides[i];
  }
  if (!Number.isSafeInteger(numel) || !Number.isSafeInteger(last)) throw new PickleError(`${where}: tensor is too large`);
  // Every element the view can address must lie inside its storage.
  if (numel > 0 ? last >= storage.numel : offset > storage.numel) {
    throw new PickleError(`${where}: tensor view [offset ${offset}, shape ${shape}, stride ${strides}] reaches outside its storage of ${storage.numel} elements`);
  }
  return new TorchTensor(storage, offset, shape, strides, v2 ? (requiresGrad as boolean) : false);
}

/** torch._utils._rebuild_parameter(_with_state): (data, requires_grad, hooks[, state]). */
function rebuildParameter(args: readonly PyValue[], withState: boolean, where: string): TorchTensor {
  if (args.length !== (withState ? 4 : 3)) throw new PickleError(`${where}: _rebuild_parameter called with ${args.length} arguments`);
  const [data, requiresGrad, hooks] = args;
  if (!(data instanceof TorchTensor)) throw new PickleError(`${where}: parameter data must be a tensor, got ${describe(data)}`);
  if (typeof requiresGrad !== 'boolean') throw new PickleError(`${where}: requires_grad must be a bool`);
  if (!(hooks instanceof PyDict)) throw new PickleError(`${where}: backward hooks must be an OrderedDict`);
  return new TorchTensor(data.storage, data.offset, data.shape, data.stride, requiresGrad, true);
}

function makeOrderedDict(args: readonly PyValue[], where: string): PyDict {
  const d = new PyDict(true);
  if (args.length === 0) return d;
  if (args.length !== 1) throw new PickleError(`${where}: OrderedDict called with ${args.length} arguments`);
  const src = args[0];
  const pairs = src instanceof PyTuple ? src.items : Array.isArray(src) ? src : undefined;
  if (!pairs) throw new PickleError(`${where}: OrderedDict expects a list of pairs, got ${describe(src)}`);
  for (const p of pairs) {
    const kv = p instanceof PyTuple ? p.items : Array.isArray(p) ? p : undefined;
    if (!kv || kv.length !== 2) throw new PickleError(`${where}: OrderedDict item is not a pair: ${describe(p)}`);
    d.map.set(asKey(kv[0], where), kv[1]);
  }
  return d;
}

function makeSet(args: readonly PyValue[], where: string): PySet {
  const s = new PySet();
  if (args.length === 0) return s;
  const src = args[0];
  const items = src instanceof PyTuple ? src.items : Array.isArray(src) ? src : undefined;
  if (args.length !== 1 || !items) throw new PickleError(`${where}: set expects one list argument`);
  for (const x of items) s.items.add(asKey(x, where));
  return s;
}

/** module → name → what it means. Nothing outside this table can be named by a pickle. */
function buildWhitelist(maxDims: number): Map<string, Map<string, GlobalSpec>> {
  const t = new Map<string, Map<string, GlobalSpec>>();
  const add = (module: string, name: string, spec: GlobalSpec) => {
    if (!t.has(module)) t.set(module, new Map());
    t.get(module)!.set(name, spec);
  };
  add('torch._utils', '_rebuild_tensor_v2', { kind: 'callable', call: (a, w) => rebuildTensor(a, true, w, maxDims) });
  add('torch._utils', '_rebuild_tensor', { kind: 'callable', call: (a, w) => rebuildTensor(a, false, w, maxDims) });
  add('torch._utils', '_rebuild_parameter', { kind: 'callable', call: (a, w) => rebuildParameter(a, false, w) });
  add('torch._utils', '_rebuild_parameter_with_state', { kind: 'callable', call: (a, w) => rebuildParameter(a, true, w) });
  add('collections', 'OrderedDict', { kind: 'callable', call: makeOrderedDict });
  // Module state (original textual_inversion repo's ParameterDict) holds `set()`;
  // protocol 2 names it __builtin__.set.
  add('builtins', 'set', { kind: 'callable', call: makeSet });
  add('__builtin__', 'set', { kind: 'callable', call: makeSet });
  add('torch.nn.modules.container', 'ParameterDict', { kind: 'class' });
  for (const [name, dtype] of STORAGE_TYPES) add('torch', name, { kind: 'storage', dtype });
  return t;
}

// ---------------------------------------------------------------- helpers

function asKey(v: PyValue | undefined, where: string): PyKey {
  if (v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return v;
  throw new PickleError(`${where}: unsupported dict key ${describe(v)}`);
}

/** A short, non-recursive description of a value for error messages. */
export function describe(v: PyValue | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'None';
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? v.slice(0, 60) + '…' : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (v instanceof Uint8Array) return `bytes[${v.length}]`;
  if (Array.isArray(v)) return `list[${v.length}]`;
  if (v instanceof PyTuple) return `tuple[${v.items.length}]`;
  if (v instanceof PyDict) return `${v.ordered ? 'OrderedDict' : 'dict'}[${v.size}]`;
  if (v instanceof PySet) return `set[${v.items.size}]`;
  if (v instanceof PyGlobal) return v.qualifiedName;
  if (v instanceof PyObject) return `${v.cls.qualifiedName} object`;
  if (v instanceof TorchStorage) return `${v.dtype} storage "${v.key}"`;
  if (v instanceof TorchTensor) return `${v.dtype} tensor [${v.shape.join(', ')}]`;
  return 'unknown value';
}

const OPCODE_NAMES: Record<number, string> = {
  0x49: 'INT', 0x4c: 'LONG', 0x53: 'STRING', 0x56: 'UNICODE', 0x46: 'FLOAT', 0x67: 'GET', 0x70: 'PUT',
  0x54: 'BINSTRING', 0x55: 'SHORT_BINSTRING', 0x69: 'INST', 0x6f: 'OBJ', 0x50: 'PERSID',
  0x82: 'EXT1', 0x83: 'EXT2', 0x84: 'EXT4', 0x96: 'BYTEARRAY8', 0x97: 'NEXT_BUFFER', 0x98: 'READONLY_BUFFER',
};
/** Opcodes that import, call or construct by name: refused as a security matter. */
const DANGEROUS = new Set([0x69, 0x6f, 0x50, 0x82, 0x83, 0x84, 0x97, 0x98]);

const utf8 = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------- the VM

export function unpickle(data: Uint8Array, opts: UnpickleOptions = {}): PyValue {
  const L: PickleLimits = { ...DEFAULT_PICKLE_LIMITS, ...opts.limits };
  const label = opts.label ?? 'pickle';
  const whitelist = buildWhitelist(L.maxTensorDims);
  if (data.length > L.maxBytes) throw new PickleError(`${label}: pickle of ${data.length} bytes exceeds the ${L.maxBytes}-byte limit`);

  let pos = 0;
  let opPos = 0;
  let stack: PyValue[] = [];
  const metastack: PyValue[][] = [];
  let buried = 0; // items held in metastack, for the stack limit
  const memo = new Map<number, PyValue>();
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);

  const where = () => `${label} at byte ${opPos}`;
  const fail = (msg: string): never => { throw new PickleError(`${where()}: ${msg}`); };
  const refuse = (msg: string): never => { throw new PickleSecurityError(`${where()}: ${msg}`); };

  const need = (n: number) => { if (n < 0 || pos + n > data.length) fail('truncated pickle'); };
  const u8 = () => { need(1); return data[pos++]; };
  const u16 = () => { need(2); const v = view.getUint16(pos, true); pos += 2; return v; };
  const u32 = () => { need(4); const v = view.getUint32(pos, true); pos += 4; return v; };
  const u64 = () => {
    need(8);
    const v = view.getBigUint64(pos, true); pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail('length field is too large');
    return Number(v);
  };
  const bytes = (n: number) => { need(n); const b = data.subarray(pos, pos + n); pos += n; return b; };
  const str = (n: number) => {
    if (n > L.maxStringBytes) fail(`string of ${n} bytes exceeds the ${L.maxStringBytes}-byte limit`);
    try { return utf8.decode(bytes(n)); } catch (e) { if (e instanceof PickleError) throw e; return fail('string is not valid UTF-8'); }
  };
  const line = () => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0 || end - pos > 256) fail('GLOBAL name is unterminated or too long');
    const s = str(end - pos);
    pos++;
    return s;
  };

  const push = (v: PyValue) => {
    if (stack.length + buried >= L.maxStack) fail(`stack exceeds ${L.maxStack} items`);
    stack.push(v);
  };
  const pop = (): PyValue => {
    if (stack.length === 0) fail('stack underflow');
    return stack.pop() as PyValue;
  };
  const top = (): PyValue => {
    if (stack.length === 0) fail('stack underflow');
    return stack[stack.length - 1];
  };
  const popMark = (): PyValue[] => {
    const items = stack;
    const prev = metastack.pop();
    if (!prev) fail('MARK expected but none is open');
    stack = prev as PyValue[];
    buried -= stack.length;
    return items;
  };
  const memoPut = (key: number, v: PyValue) => {
    if (!memo.has(key) && memo.size >= L.maxMemo) fail(`memo exceeds ${L.maxMemo} entries`);
    memo.set(key, v);
  };
  const memoGet = (key: number) => {
    if (!memo.has(key)) fail(`memo key ${key} is not defined`);
    push(memo.get(key) as PyValue);
  };
  const resolveGlobal = (module: string, name: string): PyGlobal => {
    const spec = whitelist.get(module)?.get(name);
    if (!spec) refuse(`global "${module}.${name}" is not allowed (only tensor, storage and container types are)`);
    return new PyGlobal(module, name, spec as GlobalSpec);
  };
  const setItems = (target: PyValue, items: PyValue[]) => {
    if (!(target instanceof PyDict)) refuse(`SETITEM(S) on ${describe(target)} (only dicts may be filled)`);
    if (items.length % 2 !== 0) fail('SETITEMS with an odd number of items');
    for (let i = 0; i < items.length; i += 2) (target as PyDict).map.set(asKey(items[i], where()), items[i + 1]);
  };
  const appendItems = (target: PyValue, items: PyValue[]) => {
    if (!Array.isArray(target)) refuse(`APPEND(S) on ${describe(target)} (only lists may be appended to)`);
    for (const x of items) (target as PyValue[]).push(x);
  };
  const int = (v: bigint): number | bigint => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
  const long = (n: number) => {
    if (n > L.maxIntBytes) fail(`integer of ${n} bytes exceeds the ${L.maxIntBytes}-byte limit`);
    const b = bytes(n);
    if (n === 0) return 0;
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[n - 1] & 0x80) v -= 1n << BigInt(8 * n);
    return int(v);
  };

  for (;;) {
    opPos = pos;
    if (pos >= data.length) fail('pickle ended without STOP');
    const op = data[pos++];
    switch (op) {
      case 0x80: { // PROTO
        const v = u8();
        if (v > 5) fail(`unsupported pickle protocol ${v}`);
        break;
      }
      case 0x95: { // FRAME: a length prefix only; data follows inline
        const n = u64();
        if (pos + n > data.length) fail('FRAME runs past the end of the pickle');
        break;
      }
      case 0x2e: { // STOP
        const v = pop();
        return v;
      }
      case 0x28: // MARK
        if (metastack.length >= L.maxMarkDepth) fail(`MARK nesting exceeds ${L.maxMarkDepth}`);
        metastack.push(stack);
        buried += stack.length;
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length) stack.pop(); else popMark();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        push(top());
        break;
      case 0x4e: push(null); break; // NONE
      case 0x88: push(true); break; // NEWTRUE
      case 0x89: push(false); break; // NEWFALSE
      case 0x4a: { need(4); const v = view.getInt32(pos, true); pos += 4; push(v); break; } // BININT
      case 0x4b: push(u8()); break; // BININT1
      case 0x4d: push(u16()); break; // BININT2
      case 0x8a: push(long(u8())); break; // LONG1
      case 0x8b: { // LONG4
        need(4); const n = view.getInt32(pos, true); pos += 4;
        if (n < 0) fail('negative LONG4 length');
        push(long(n));
        break;
      }
      case 0x47: { need(8); const v = view.getFloat64(pos, false); pos += 8; push(v); break; } // BINFLOAT (big-endian)
      case 0x58: push(str(u32())); break; // BINUNICODE
      case 0x8c: push(str(u8())); break; // SHORT_BINUNICODE
      case 0x8d: push(str(u64())); break; // BINUNICODE8
      case 0x43: // SHORT_BINBYTES
      case 0x42: // BINBYTES
      case 0x8e: { // BINBYTES8
        const n = op === 0x43 ? u8() : op === 0x42 ? u32() : u64();
        if (n > L.maxStringBytes) fail(`bytes of ${n} exceed the ${L.maxStringBytes}-byte limit`);
        push(bytes(n).slice());
        break;
      }
      case 0x7d: push(new PyDict()); break; // EMPTY_DICT
      case 0x5d: push([]); break; // EMPTY_LIST
      case 0x29: push(new PyTuple([])); break; // EMPTY_TUPLE
      case 0x8f: push(new PySet()); break; // EMPTY_SET
      case 0x74: push(new PyTuple(popMark())); break; // TUPLE
      case 0x85: { const a = pop(); push(new PyTuple([a])); break; } // TUPLE1
      case 0x86: { const b = pop(); const a = pop(); push(new PyTuple([a, b])); break; } // TUPLE2
      case 0x87: { const c = pop(); const b = pop(); const a = pop(); push(new PyTuple([a, b, c])); break; } // TUPLE3
      case 0x6c: push(popMark()); break; // LIST
      case 0x64: { const items = popMark(); const d = new PyDict(); setItems(d, items); push(d); break; } // DICT
      case 0x91: { // FROZENSET
        const items = popMark();
        const s = new PySet(true);
        for (const x of items) s.items.add(asKey(x, where()));
        push(s);
        break;
      }
      case 0x61: { const v = pop(); appendItems(top(), [v]); break; } // APPEND
      case 0x65: { const items = popMark(); appendItems(top(), items); break; } // APPENDS
      case 0x73: { const v = pop(); const k = pop(); setItems(top(), [k, v]); break; } // SETITEM
      case 0x75: { const items = popMark(); setItems(top(), items); break; } // SETITEMS
      case 0x90: { // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof PySet) || s.frozen) refuse(`ADDITEMS on ${describe(s)} (only sets may be added to)`);
        for (const x of items) (s as PySet).items.add(asKey(x, where()));
        break;
      }
      case 0x71: memoPut(u8(), top()); break; // BINPUT
      case 0x72: memoPut(u32(), top()); break; // LONG_BINPUT
      case 0x94: memoPut(memo.size, top()); break; // MEMOIZE
      case 0x68: memoGet(u8()); break; // BINGET
      case 0x6a: memoGet(u32()); break; // LONG_BINGET
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line();
        const name = line();
        push(resolveGlobal(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings');
        push(resolveGlobal(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE: callable(*args)
        const args = pop();
        const fn = pop();
        if (!(fn instanceof PyGlobal) || fn.spec.kind !== 'callable') refuse(`REDUCE may only call whitelisted functions, not ${describe(fn)}`);
        if (!(args instanceof PyTuple)) fail(`REDUCE arguments must be a tuple, got ${describe(args)}`);
        push(((fn as PyGlobal).spec as { call: (a: readonly PyValue[], w: string) => PyValue }).call((args as PyTuple).items, where()));
        break;
      }
      case 0x81: // NEWOBJ: cls.__new__(cls, *args)
      case 0x92: { // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
        const kwargs = op === 0x92 ? pop() : null;
        const args = pop();
        const cls = pop();
        if (!(cls instanceof PyGlobal) || cls.spec.kind !== 'class') refuse(`${op === 0x81 ? 'NEWOBJ' : 'NEWOBJ_EX'} may only create whitelisted classes, not ${describe(cls)}`);
        if (!(args instanceof PyTuple) || args.items.length !== 0) fail(`${describe(cls)} must be created with no arguments`);
        if (kwargs !== null && !(kwargs instanceof PyDict && kwargs.size === 0)) fail(`${describe(cls)} must be created with no keyword arguments`);
        push(new PyObject(cls as PyGlobal));
        break;
      }
      case 0x62: { // BUILD: set state on the object below
        const state = pop();
        const obj = top();
        if (!(obj instanceof PyObject)) refuse(`BUILD on ${describe(obj)} is not allowed`);
        if ((obj as PyObject).state !== undefined) fail(`${describe(obj)} was built twice`);
        (obj as PyObject).state = state;
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        if (!opts.persistentLoad) refuse('persistent id found but no loader is configured');
        push(opts.persistentLoad!(pid));
        break;
      }
      default: {
        const name = OPCODE_NAMES[op];
        if (DANGEROUS.has(op)) refuse(`opcode ${name} is not allowed`);
        if (name) fail(`unsupported opcode ${name} (0x${op.toString(16)})`);
        fail(`unknown opcode 0x${op.toString(16).padStart(2, '0')}`);
      }
    }
  }
}

// ---------------------------------------------------------------- torch.save archives

export interface TorchArchive {
  readonly path: string;
  /** The unpickled top-level object. */
  readonly root: PyValue;
  /** Folder name every record sits in (torch uses the saved file's stem, or "archive"). */
  readonly prefix: string;
  readonly byteOrder: 'little' | 'big';
  /** Gathers a (possibly strided, offset) tensor and converts it to float32. */
  tensorToFloat32(t: TorchTensor): Float32Array;
  close(): void;
}

const STORAGE_KEY = /^[A-Za-z0-9_.-]{1,128}$/;

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/**
 * Opens a `torch.save` zip archive (.pt/.bin/.ckpt) and unpickles its data.pkl
 * with the restricted VM; storages are bound lazily to their `data/<key>` records.
 */
export function loadTorchArchive(path: string, opts: { limits?: Partial<PickleLimits> } = {}): TorchArchive {
  const limits = { ...DEFAULT_PICKLE_LIMITS, ...opts.limits };
  let zip: ZipArchive;
  try {
    // No record is inflated beyond what the limits allow, whatever the directory claims.
    zip = ZipArchive.open(path, { maxEntryBytes: Math.max(limits.maxBytes, limits.maxStorageBytes) });
  } catch (e) {
    if (e instanceof ZipError) throw new PickleError(`${path}: not a readable PyTorch zip archive: ${e.message}`);
    throw e;
  }
  try {
    const pkl = zip.names.filter((n) => /^[^/]+\/data\.pkl$/.test(n));
    if (pkl.length !== 1) {
      const torchScript = zip.names.some((n) => /^[^/]+\/constants\.pkl$/.test(n));
      if (torchScript) throw new PickleError(`${path}: this is a TorchScript archive, not a torch.save file`);
      throw new PickleError(pkl.length === 0 ? `${path}: no data.pkl in the archive; not a torch.save file` : `${path}: several data.pkl records; ambiguous archive`);
    }
    const prefix = pkl[0].slice(0, pkl[0].indexOf('/'));
    let byteOrder: 'little' | 'big' = 'little'; // archives before torch 2.1 have no record; they were written little-endian in practice
    if (zip.has(`${prefix}/byteorder`)) {
      const bo = new TextDecoder().decode(zip.read(`${prefix}/byteorder`)).trim();
      if (bo !== 'little' && bo !== 'big') throw new PickleError(`${path}: byteorder record says "${bo.slice(0, 20)}", expected little or big`);
      byteOrder = bo;
    }
    const pklEntry = zip.entry(pkl[0]);
    if (pklEntry.uncompressedSize > limits.maxBytes) throw new PickleError(`${path}: data.pkl of ${pklEntry.uncompressedSize} bytes exceeds the limit`);
    const storages = new Map<string, TorchStorage>();
    const persistentLoad = (pid: PyValue): PyValue => {
      // torch.save: ('storage', torch.<Type>Storage, key, location, numel)
      const t = pid instanceof PyTuple ? pid.items : undefined;
      if (!t || t.length !== 5 || t[0] !== 'storage') throw new PickleError(`${path}: unsupported persistent id ${describe(pid)}`);
      const [, type, key, location, numel] = t;
      if (!(type instanceof PyGlobal) || type.spec.kind !== 'storage') throw new PickleSecurityError(`${path}: storage type ${describe(type)} is not a known storage class`);
      if (typeof key !== 'string' || !STORAGE_KEY.test(key)) throw new PickleError(`${path}: bad storage key ${describe(key)}`);
      if (typeof location !== 'string') throw new PickleError(`${path}: bad storage location ${describe(location)}`);
      if (!isInt(numel) || numel < 0) throw new PickleError(`${path}: bad storage size ${describe(numel)}`);
      const dtype = type.spec.dtype;
      const seen = storages.get(key);
      if (seen) {
        if (seen.dtype !== dtype || seen.numel !== numel) throw new PickleError(`${path}: storage "${key}" is referenced with conflicting types or sizes`);
        return seen;
      }
      const rec = `${prefix}/data/${key}`;
      if (!zip.has(rec)) throw new PickleError(`${path}: storage record "${rec}" is missing`);
      const bytesNeeded = numel * DTYPE_SIZE[dtype];
      if (bytesNeeded > limits.maxStorageBytes) throw new PickleError(`${path}: storage "${key}" declares ${bytesNeeded} bytes; at most ${limits.maxStorageBytes} are read`);
      if (zip.entry(rec).uncompressedSize !== bytesNeeded) {
        throw new PickleError(`${path}: storage "${key}" holds ${zip.entry(rec).uncompressedSize} bytes, but ${numel} ${dtype} elements need ${bytesNeeded}`);
      }
      const s = new TorchStorage(key, dtype, location, numel);
      storages.set(key, s);
      return s;
    };
    const root = unpickle(zip.read(pkl[0]), { persistentLoad, label: `${path}:data.pkl`, limits: opts.limits });
    const little = byteOrder === 'little';

    const tensorToFloat32 = (t: TorchTensor): Float32Array => {
      if (storages.get(t.storage.key) !== t.storage) throw new PickleError(`${path}: tensor does not belong to this archive`);
      const n = t.numel;
      const out = new Float32Array(n);
      if (n === 0) return out;
      const es = DTYPE_SIZE[t.dtype];
      let last = t.offset;
      for (let i = 0; i < t.shape.length; i++) last += (t.shape[i] - 1) * t.stride[i];
      // Read only the span the view touches (a slice of a big embedding matrix stays cheap).
      const raw = zip.readRange(`${prefix}/data/${t.storage.key}`, t.offset * es, (last - t.offset + 1) * es);
      const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
      const get = (k: number): number => {
        const o = k * es;
        switch (t.dtype) {
          case 'float32': return dv.getFloat32(o, little);
          case 'float64': return dv.getFloat64(o, little);
          case 'float16': return halfToFloat(dv.getUint16(o, little));
          case 'bfloat16': { const h = dv.getUint16(o, little); const f = new DataView(new ArrayBuffer(4)); f.setUint32(0, h << 16); return f.getFloat32(0); }
          case 'int64': return Number(dv.getBigInt64(o, little));
          case 'int32': return dv.getInt32(o, little);
          case 'int16': return dv.getInt16(o, little);
          case 'int8': return dv.getInt8(o);
          case 'uint8': case 'bool': return dv.getUint8(o);
        }
      };
      // Walk indices in row-major order, element address = Σ idx·stride (relative to offset).
      const nd = t.shape.length;
      const idx = new Array<number>(nd).fill(0);
      let addr = 0;
      for (let i = 0; i < n; i++) {
        out[i] = get(addr);
        for (let d = nd - 1; d >= 0; d--) {
          idx[d]++;
          addr += t.stride[d];
          if (idx[d] < t.shape[d]) break;
          addr -= idx[d] * t.stride[d];
          idx[d] = 0;
        }
      }
      return out;
    };
    return { path, root, prefix, byteOrder, tensorToFloat32, close: () => zip.close() };
  } catch (e) {
    zip.close();
    if (e instanceof ZipError) throw new PickleError(`${path}: ${e.message}`);
    throw e;
  }
}
