import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import {
  unpickle, loadTorchArchive, PickleError, PickleSecurityError,
  PyDict, PyTuple, PySet, PyObject, TorchStorage, TorchTensor, type PyValue,
} from '../../src/io/pickle.ts';

const FIX = new URL('../fixtures/embeddings/', import.meta.url).pathname;
/** The hostile fixtures try to create this file (see gen/make_embedding_fixtures.py). */
const MARKER = '/tmp/oneword-pickle-pwned';

// ---- a tiny pickle assembler: each helper returns the bytes of one opcode
type Part = number | number[] | Uint8Array;
const pk = (...parts: Part[]): Uint8Array => {
  const out: number[] = [];
  for (const p of parts) {
    if (typeof p === 'number') out.push(p);
    else out.push(...p);
  }
  return Uint8Array.from(out);
};
const le32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
const utf8 = (s: string) => [...new TextEncoder().encode(s)];
const X = (s: string) => [0x58, ...le32(utf8(s).length), ...utf8(s)]; // BINUNICODE
const SU = (s: string) => [0x8c, utf8(s).length, ...utf8(s)]; // SHORT_BINUNICODE
const K = (n: number) => [0x4b, n]; // BININT1
const J = (n: number) => [0x4a, ...le32(n)]; // BININT
const G = (m: string, n: string) => [0x63, ...utf8(`${m}\n${n}\n`)]; // GLOBAL
const PROTO2 = [0x80, 2];
const MARK = 0x28, STOP = 0x2e, TUPLE = 0x74, REDUCE = 0x52, EMPTY_TUPLE = 0x29, EMPTY_DICT = 0x7d, EMPTY_LIST = 0x5d;
const SETITEM = 0x73, SETITEMS = 0x75, APPEND = 0x61, APPENDS = 0x65, BUILD = 0x62, NEWOBJ = 0x81, BINPERSID = 0x51;
const TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, NONE = 0x4e, STACK_GLOBAL = 0x93, MEMOIZE = 0x94;
const BINPUT = (i: number) => [0x71, i];
const BINGET = (i: number) => [0x68, i];
const ORDERED_DICT = [...G('collections', 'OrderedDict'), EMPTY_TUPLE, REDUCE];

function refused(bytes: Uint8Array, re: RegExp, opts: Parameters<typeof unpickle>[1] = {}) {
  rmSync(MARKER, { force: true });
  assert.throws(() => unpickle(bytes, opts), (e: unknown) => e instanceof PickleSecurityError && re.test((e as Error).message));
  assert.equal(existsSync(MARKER), false, 'the hostile payload must not have run');
}
function malformed(bytes: Uint8Array, re: RegExp, opts: Parameters<typeof unpickle>[1] = {}) {
  assert.throws(() => unpickle(bytes, opts), (e: unknown) => e instanceof PickleError && !(e instanceof PickleSecurityError) && re.test((e as Error).message));
}

test('decodes the data opcodes torch.save emits (protocol 2)', () => {
  const v = unpickle(pk(PROTO2, EMPTY_DICT, BINPUT(0), MARK,
    X('s'), X('héllo ✓'),
    X('i'), J(-5),
    X('small'), K(200),
    X('m'), 0x4d, 0x34, 0x12, // BININT2
    X('big'), 0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1, // LONG1 2^64
    X('neg'), 0x8a, 2, 0x00, 0xff, // LONG1 -256
    X('f'), 0x47, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, // BINFLOAT 1.5 (big-endian)
    X('t'), K(1), K(2), TUPLE2,
    X('l'), EMPTY_LIST, BINPUT(1), MARK, K(1), K(2), APPENDS, K(3), APPEND,
    X('n'), NONE, X('yes'), NEWTRUE, X('no'), NEWFALSE,
    X('again'), BINGET(1),
    SETITEMS, STOP));
  assert.ok(v instanceof PyDict);
  assert.equal(v.get('s'), 'héllo ✓');
  assert.equal(v.get('i'), -5);
  assert.equal(v.get('small'), 200);
  assert.equal(v.get('m'), 0x1234);
  assert.equal(v.get('big'), 2n ** 64n);
  assert.equal(v.get('neg'), -256);
  assert.equal(v.get('f'), 1.5);
  assert.deepEqual((v.get('t') as PyTuple).items, [1, 2]);
  assert.deepEqual(v.get('l'), [1, 2, 3]);
  assert.equal(v.get('again'), v.get('l'), 'memo returns the same object');
  assert.equal(v.get('n'), null);
  assert.equal(v.get('yes'), true);
  assert.equal(v.get('no'), false);
});

test('decodes protocol 4 framing, MEMOIZE, SHORT_BINUNICODE and STACK_GLOBAL', () => {
  const body = pk(EMPTY_DICT, MEMOIZE, SU('od'), MEMOIZE, SU('collections'), SU('OrderedDict'), STACK_GLOBAL, MEMOIZE, EMPTY_TUPLE, REDUCE, MEMOIZE,
    SU('k'), K(7), SETITEM, SETITEM, STOP);
  const frame = [0x95, ...le32(body.length), 0, 0, 0, 0];
  const v = unpickle(pk([0x80, 4], frame, body));
  assert.ok(v instanceof PyDict);
  const od = v.get('od');
  assert.ok(od instanceof PyDict && od.ordered);
  assert.equal(od.get('k'), 7);
});

test('rebuilds tensors and parameters through the whitelisted torch functions', () => {
  const storage = new TorchStorage('0', 'float32', 'cpu', 12);
  const pid = pk(MARK, X('storage'), G('torch', 'FloatStorage'), X('0'), X('cpu'), K(12), TUPLE);
  const tensor = pk(G('torch._utils', '_rebuild_tensor_v2'), MARK, pid, BINPERSID, K(2), K(2), K(3), TUPLE2, K(1), K(2), TUPLE2, NEWTRUE, ORDERED_DICT, TUPLE, REDUCE);
  const seen: PyValue[] = [];
  const persistentLoad = (p: PyValue) => { seen.push(p); return storage; };
  const t = unpickle(pk(PROTO2, tensor, STOP), { persistentLoad });
  assert.ok(t instanceof TorchTensor);
  assert.deepEqual([t.offset, t.shape, t.stride, t.requiresGrad, t.isParameter], [2, [2, 3], [1, 2], true, false]);
  const pidTuple = seen[0] as PyTuple;
  assert.equal(pidTuple.items[0], 'storage');
  assert.equal(pidTuple.items.length, 5);

  const param = unpickle(pk(PROTO2, G('torch._utils', '_rebuild_parameter'), tensor, NEWFALSE, ORDERED_DICT, TUPLE3, REDUCE, STOP), { persistentLoad });
  assert.ok(param instanceof TorchTensor && param.isParameter && !param.requiresGrad);
  // torch >= 2.0 pickles Parameters that carry Python attributes this way.
  const withState = unpickle(pk(PROTO2, G('torch._utils', '_rebuild_parameter_with_state'), MARK, tensor, NEWTRUE, ORDERED_DICT, EMPTY_DICT, TUPLE, REDUCE, STOP), { persistentLoad });
  assert.ok(withState instanceof TorchTensor && withState.isParameter && withState.requiresGrad);
  malformed(pk(PROTO2, G('torch._utils', '_rebuild_parameter'), X('not a tensor'), NEWTRUE, ORDERED_DICT, TUPLE3, REDUCE, STOP), /parameter data must be a tensor/);
});

test('tensor views that reach outside their storage are rejected', () => {
  const storage = new TorchStorage('0', 'float32', 'cpu', 6);
  const view = (offset: number, size: number[], stride: number[]) => pk(PROTO2, G('torch._utils', '_rebuild_tensor_v2'), MARK,
    MARK, X('storage'), G('torch', 'FloatStorage'), X('0'), X('cpu'), K(6), TUPLE, BINPERSID,
    K(offset), MARK, ...size.map(K), TUPLE, MARK, ...stride.map(K), TUPLE, NEWFALSE, ORDERED_DICT, TUPLE, REDUCE, STOP);
  const persistentLoad = () => storage;
  assert.ok(unpickle(view(0, [2, 3], [3, 1]), { persistentLoad }) instanceof TorchTensor);
  malformed(view(1, [2, 3], [3, 1]), /outside its storage/, { persistentLoad });
  malformed(view(0, [3, 3], [3, 1]), /outside its storage/, { persistentLoad });
  malformed(view(0, [2, 3], [1]), /dims but stride/, { persistentLoad });
  malformed(view(7, [0], [1]), /outside its storage/, { persistentLoad });
});

// ---- hostile pickles

test('refuses os.system / posix.system / nt.system globals', () => {
  for (const [m, n] of [['os', 'system'], ['posix', 'system'], ['nt', 'system']]) {
    refused(pk(PROTO2, G(m, n), X(`touch ${MARKER}`), TUPLE1, REDUCE, STOP), new RegExp(`global "${m}\\.${n}" is not allowed`));
  }
});

test('refuses builtins.exec/eval/getattr/__import__ via GLOBAL and STACK_GLOBAL', () => {
  for (const name of ['exec', 'eval', 'getattr', '__import__', 'compile', 'open']) {
    refused(pk([0x80, 4], SU('builtins'), SU(name), STACK_GLOBAL, SU(`open('${MARKER}','w')`), TUPLE1, REDUCE, STOP), new RegExp(`builtins\\.${name}`));
    refused(pk(PROTO2, G('__builtin__', name), X('1+1'), TUPLE1, REDUCE, STOP), new RegExp(`__builtin__\\.${name}`));
  }
});

test('refuses subprocess, torch.load and other non-whitelisted callables', () => {
  refused(pk(PROTO2, G('subprocess', 'Popen'), EMPTY_LIST, X('touch'), APPEND, X(MARKER), APPEND, TUPLE1, REDUCE, STOP), /subprocess\.Popen/);
  refused(pk(PROTO2, G('torch', 'load'), X('/tmp/x.pt'), TUPLE1, REDUCE, STOP), /torch\.load/);
  refused(pk(PROTO2, G('torch.serialization', 'load'), EMPTY_TUPLE, REDUCE, STOP), /torch\.serialization\.load/);
  refused(pk(PROTO2, G('torch._utils', '_rebuild_from_type_v2'), EMPTY_TUPLE, REDUCE, STOP), /_rebuild_from_type_v2/);
  // Names that would hit Object.prototype if looked up on a plain object.
  refused(pk(PROTO2, G('torch._utils', '__proto__'), STOP), /__proto__/);
  refused(pk(PROTO2, G('constructor', 'constructor'), STOP), /constructor/);
});

test('a malicious REDUCE buried inside an otherwise valid embedding dict is refused', () => {
  refused(pk(PROTO2, EMPTY_DICT, MARK, X('name'), X('ok'), X('string_to_param'), EMPTY_DICT, X('*'),
    G('posix', 'system'), X(`touch ${MARKER}`), TUPLE1, REDUCE, SETITEM, SETITEMS, STOP), /posix\.system/);
});

test('REDUCE may only call whitelisted functions: nested REDUCE, storage types and classes are not callable', () => {
  // OrderedDict()() — calling the result of a call.
  refused(pk(PROTO2, ORDERED_DICT, EMPTY_TUPLE, REDUCE, STOP), /REDUCE may only call whitelisted functions, not OrderedDict/);
  // A string or a number on the stack is not a function either.
  refused(pk(PROTO2, X('os.system'), EMPTY_TUPLE, REDUCE, STOP), /REDUCE may only call/);
  refused(pk(PROTO2, G('torch', 'FloatStorage'), EMPTY_TUPLE, REDUCE, STOP), /REDUCE may only call whitelisted functions, not torch\.FloatStorage/);
  refused(pk(PROTO2, G('torch.nn.modules.container', 'ParameterDict'), EMPTY_TUPLE, REDUCE, STOP), /REDUCE may only call/);
});

test('object-building opcodes are refused: INST, OBJ, EXT*, PERSID, NEWOBJ on non-classes, BUILD on non-objects', () => {
  refused(pk(PROTO2, MARK, 0x69, ...utf8('os\nsystem\n'), STOP), /opcode INST/);
  refused(pk(PROTO2, MARK, G('os', 'system'), X('x'), 0x6f, STOP), /os\.system/);
  refused(pk(PROTO2, MARK, NONE, 0x6f, STOP), /opcode OBJ/);
  refused(pk(PROTO2, 0x82, 1, STOP), /opcode EXT1/);
  refused(pk(PROTO2, 0x83, 1, 0, STOP), /opcode EXT2/);
  refused(pk(PROTO2, 0x84, 1, 0, 0, 0, STOP), /opcode EXT4/);
  refused(pk(PROTO2, 0x50, ...utf8('0\n'), STOP), /opcode PERSID/);
  refused(pk(PROTO2, G('collections', 'OrderedDict'), EMPTY_TUPLE, NEWOBJ, STOP), /NEWOBJ may only create whitelisted classes/);
  refused(pk(PROTO2, EMPTY_DICT, EMPTY_DICT, BUILD, STOP), /BUILD on dict/);
  refused(pk(PROTO2, EMPTY_LIST, X('k'), X('v'), SETITEM, STOP), /SETITEM\(S\) on list/);
  refused(pk(PROTO2, EMPTY_DICT, K(1), APPEND, STOP), /APPEND\(S\) on dict/);
  refused(pk(PROTO2, G('torch._utils', '_rebuild_tensor_v2'), K(1), APPEND, STOP), /APPEND\(S\) on torch\._utils\._rebuild_tensor_v2/);
  // Persistent ids need a loader; the bare VM refuses them.
  refused(pk(PROTO2, X('storage'), BINPERSID, STOP), /persistent id/);
});

test('the whitelisted ParameterDict class can be created and built once, with no arguments', () => {
  const PD = G('torch.nn.modules.container', 'ParameterDict');
  const obj = unpickle(pk(PROTO2, PD, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, X('training'), NEWTRUE, SETITEM, BUILD, STOP));
  assert.ok(obj instanceof PyObject && obj.state instanceof PyDict && obj.state.get('training') === true);
  malformed(pk(PROTO2, PD, K(1), TUPLE1, NEWOBJ, STOP), /no arguments/);
  malformed(pk(PROTO2, PD, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, BUILD, EMPTY_DICT, BUILD, STOP), /built twice/);
  const s = unpickle(pk(PROTO2, G('__builtin__', 'set'), EMPTY_LIST, X('a'), APPEND, TUPLE1, REDUCE, STOP));
  assert.ok(s instanceof PySet && s.items.has('a'));
});

test('resource limits: stack, marks, memo, strings, integers, input size', () => {
  malformed(pk(PROTO2, ...Array(20).fill(NONE), STOP), /stack exceeds 10/, { limits: { maxStack: 10 } });
  malformed(pk(PROTO2, ...Array(20).fill(MARK), STOP), /MARK nesting exceeds 8/, { limits: { maxMarkDepth: 8 } });
  malformed(pk(PROTO2, NONE, ...Array(20).fill(0).flatMap((_, i) => BINPUT(i)), STOP), /memo exceeds 4/, { limits: { maxMemo: 4 } });
  malformed(pk(PROTO2, X('x'.repeat(100)), STOP), /exceeds the 50-byte limit/, { limits: { maxStringBytes: 50 } });
  malformed(pk(PROTO2, 0x8b, ...le32(1000), ...Array(1000).fill(1), STOP), /integer of 1000 bytes/);
  malformed(pk(PROTO2, NONE, STOP), /exceeds the 3-byte limit/, { limits: { maxBytes: 3 } });
  // A BINUNICODE that claims 4 GiB of text in a 20-byte pickle.
  malformed(pk(PROTO2, 0x58, 0xff, 0xff, 0xff, 0xff, 0x41, STOP), /string of 4294967295 bytes|truncated/);
  malformed(pk(PROTO2, 0x58, 0x10, 0, 0, 0, 0x41, STOP), /truncated/);
});

test('malformed streams fail with PickleError, not crashes', () => {
  malformed(pk(PROTO2, NONE), /without STOP/);
  malformed(pk(PROTO2, STOP), /stack underflow/);
  malformed(pk(PROTO2, BINGET(9), STOP), /memo key 9/);
  malformed(pk(PROTO2, 0x31, STOP), /MARK expected/);
  malformed(pk(PROTO2, APPENDS, STOP), /MARK expected/);
  malformed(pk([0x80, 9], NONE, STOP), /unsupported pickle protocol 9/);
  malformed(pk(PROTO2, 0xff, STOP), /unknown opcode 0xff/);
  malformed(pk(PROTO2, 0x49, ...utf8('1\n'), STOP), /unsupported opcode INT/);
  malformed(pk(PROTO2, 0x58, 1, 0, 0, 0, 0xc3, STOP), /not valid UTF-8/);
  malformed(pk(PROTO2, 0x63, ...utf8('torch'), STOP), /GLOBAL name is unterminated/);
  malformed(pk(PROTO2, EMPTY_DICT, EMPTY_LIST, K(1), SETITEM, STOP), /unsupported dict key list/);
  malformed(pk(PROTO2, EMPTY_DICT, MARK, K(1), SETITEMS, STOP), /odd number/);
  refused(pk(PROTO2, K(1), EMPTY_TUPLE, REDUCE, STOP), /REDUCE may only call whitelisted functions, not 1/);
  malformed(pk(PROTO2, ...ORDERED_DICT.slice(0, -2), EMPTY_DICT, REDUCE, STOP), /arguments must be a tuple/);
  malformed(pk(PROTO2, ...ORDERED_DICT.slice(0, -2), K(1), TUPLE1, REDUCE, STOP), /list of pairs/);
  // A self-referencing list is fine to hold (no recursion happens).
  const v = unpickle(pk(PROTO2, EMPTY_LIST, BINPUT(0), BINGET(0), APPEND, STOP));
  assert.ok(Array.isArray(v) && v[0] === v);
});

// ---- real archives

test('loads an AUTOMATIC1111 .pt exactly like torch.load would', () => {
  const a = loadTorchArchive(FIX + 'a1111-style.pt');
  try {
    assert.equal(a.prefix, 'a1111-style');
    assert.equal(a.byteOrder, 'little');
    const root = a.root as PyDict;
    assert.equal(root.get('name'), 'a1111-style');
    assert.equal(root.get('step'), 1500);
    assert.equal((root.get('string_to_token') as PyDict).get('*'), 265);
    const t = (root.get('string_to_param') as PyDict).get('*') as TorchTensor;
    assert.deepEqual([t.dtype, t.shape, t.stride, t.requiresGrad, t.storage.location], ['float32', [2, 16], [16, 1], true, 'cpu']);
    const v = a.tensorToFloat32(t);
    for (let i = 0; i < 32; i++) assert.equal(v[i], Math.fround(i * 0.01 - 0.3));
  } finally {
    a.close();
  }
});

test('the original repo layout: ParameterDict state, CUDA locations, a 0-d int64 view at an offset', () => {
  const a = loadTorchArchive(FIX + 'original-repo.pt');
  try {
    const root = a.root as PyDict;
    const tok = (root.get('string_to_token') as PyDict).get('*') as TorchTensor;
    assert.deepEqual([tok.dtype, tok.shape, tok.offset, tok.storage.location], ['int64', [], 1, 'cuda:0']);
    assert.deepEqual([...a.tensorToFloat32(tok)], [265]);
    const pd = root.get('string_to_param') as PyObject;
    assert.equal(pd.cls.qualifiedName, 'torch.nn.modules.container.ParameterDict');
    const params = (pd.state as PyDict).get('_parameters') as PyDict;
    const p = params.get('*') as TorchTensor;
    assert.ok(p.isParameter);
    assert.equal(a.tensorToFloat32(p)[15], Math.fround(15 * 0.01 - 0.3));
  } finally {
    a.close();
  }
});

test('hostile .pt/.bin fixtures written by real Python pickle are refused and nothing runs', () => {
  const cases: Array<[string, RegExp]> = [
    ['hostile-os-system.pt', /posix\.system/],
    ['hostile-exec.bin', /builtins\.exec/],
    ['hostile-subprocess.pt', /subprocess\.Popen/],
    ['hostile-storage-type.pt', /posix\.system/],
  ];
  for (const [file, re] of cases) {
    rmSync(MARKER, { force: true });
    assert.throws(() => loadTorchArchive(FIX + file), (e: unknown) => e instanceof PickleSecurityError && re.test((e as Error).message) && (e as Error).message.includes(file));
    assert.equal(existsSync(MARKER), false);
  }
});

test('archive-level checks: missing data.pkl, not a zip', () => {
  assert.throws(() => loadTorchArchive(FIX + 'learned_embeds.safetensors'), /not a readable PyTorch zip archive/);
});
