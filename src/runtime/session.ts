// Compiles graphs into ONNX Runtime sessions, caches them, and runs them on typed arrays.
//
// Weights: three ways were measured (see bench/engine.ts and ORT-NOTES):
// - inline initializers are copied into the model bytes and again by ORT: fine for tests;
// - fed inputs are bound once as ort.Tensors over our own arrays (ORT does not copy
//   inputs), so one in-memory weight set serves every session;
// - external data pointing into the user's float32 .safetensors file is memory-mapped
//   by ORT: no private copy at all. With prepacking disabled the run speed is unchanged.
import './ort-telemetry.ts';
import ort from 'onnxruntime-node';
import { createHash } from 'node:crypto';
import { statSync } from 'node:fs';
import { basename } from 'node:path';
import { exportOnnx, type ExportedModel, type ExportOptions } from '../graph/onnx.ts';
import { GraphError, Tensor, type DType, type HostArray } from '../graph/tensor.ts';
import { MAX_THREADS, threadsProblem } from './threads.ts';

export interface CompileOptions extends ExportOptions {
  /** Intra-op threads; default: all cores. */
  threads?: number;
  optimization?: 'disabled' | 'basic' | 'extended' | 'all';
  /** Keep weights mapped instead of letting ORT repack (copy) them. */
  disablePrepacking?: boolean;
  /**
   * ORT's memory pattern: one block planned for the whole run from the first run's
   * allocations (faster; off = allocate as the run goes, a lower peak). Default on.
   */
  memPattern?: boolean;
  /** Write ORT's per-node profile (JSON) with this file prefix. */
  profilePrefix?: string;
  /** Let idle intra-op threads spin-wait for work (ORT's default) instead of sleeping. */
  spinning?: boolean;
  /** Write the graph as ORT optimised it (ONNX) to this path, for inspection. */
  optimizedModelPath?: string;
}

export type Feed = HostArray | Int32Array | number[];

const ORT_TYPE: Record<DType, ort.Tensor.Type> = {
  float32: 'float32',
  float16: 'float16',
  float64: 'float64',
  int64: 'int64',
  bool: 'bool',
};

function toOrt(dtype: DType, shape: readonly number[], data: Feed): ort.Tensor {
  let arr: HostArray;
  if (Array.isArray(data) || data instanceof Int32Array) {
    if (dtype === 'int64') arr = BigInt64Array.from(data as ArrayLike<number>, (v) => BigInt(v));
    else if (dtype === 'float64') arr = Float64Array.from(data as ArrayLike<number>);
    else if (dtype === 'bool') arr = Uint8Array.from(data as ArrayLike<number>);
    else arr = Float32Array.from(data as ArrayLike<number>);
  } else arr = data;
  return new ort.Tensor(ORT_TYPE[dtype], arr as any, shape as number[]);
}

/**
 * A compiled graph bound to its weights. The ORT session is shared by every graph of the
 * same structure; fed weights belong to this object, so two models of one architecture
 * share a session but never each other's weights.
 */
export class CompiledGraph {
  private readonly weightTensors: Record<string, ort.Tensor> = {};
  constructor(
    readonly session: ort.InferenceSession,
    readonly inputs: Array<{ name: string; dtype: DType; shape: readonly number[] }>,
    readonly outputNames: string[],
    weightFeeds: ExportedModel['weightFeeds'],
  ) {
    for (const [name, w] of weightFeeds) this.weightTensors[name] = toOrt(w.dtype, w.shape, w.data());
  }

  /** Runs the graph; every declared input must be fed. Outputs come back as fresh arrays. */
  async run(feeds: Record<string, Feed>): Promise<Record<string, HostArray>> {
    const ortFeeds: Record<string, ort.Tensor> = { ...this.weightTensors };
    for (const inp of this.inputs) {
      const v = feeds[inp.name];
      if (v === undefined) throw new GraphError(`run: missing input "${inp.name}"`);
      const n = inp.shape.reduce((p, q) => p * q, 1);
      if (v.length !== n) throw new GraphError(`run: input "${inp.name}" needs ${n} values for shape [${inp.shape.join(', ')}], got ${v.length}`);
      ortFeeds[inp.name] = toOrt(inp.dtype, inp.shape, v);
    }
    const res = await this.session.run(ortFeeds);
    const out: Record<string, HostArray> = {};
    for (const name of this.outputNames) out[name] = res[name].data as HostArray;
    return out;
  }
}

const sessions = new Map<string, Promise<ort.InferenceSession>>();

/**
 * What a session's outputs depend on besides its fed inputs: the model bytes (graph and
 * inline weights), the session options, and the contents of external-data files, which
 * the bytes only name (a file rewritten in place gets a new identity).
 */
function sessionKey(exported: ExportedModel, options: unknown): string {
  const h = createHash('sha256').update(exported.bytes).update(JSON.stringify(options));
  for (const file of exported.externalFiles) {
    const st = statSync(file, { bigint: true });
    h.update(JSON.stringify([file, String(st.dev), String(st.ino), String(st.size), String(st.mtimeNs), String(st.ctimeNs)]));
  }
  return h.digest('hex');
}

/** Compiles the sub-graph computing `outputs`; graphs of the same structure share one session. */
export async function compile(outputs: Record<string, Tensor>, opts: CompileOptions = {}): Promise<CompiledGraph> {
  const exported = exportOnnx(outputs, opts);
  const problem = threadsProblem(opts.threads);
  if (problem) throw new GraphError(`threads ${problem}`);
  const threads = opts.threads ?? MAX_THREADS;
  const level = opts.optimization ?? 'all';
  const key = sessionKey(exported, {
    threads, level, p: opts.disablePrepacking ?? false, s: opts.spinning ?? null, r: exported.externalRoot ?? '', mp: opts.memPattern ?? true, prof: opts.profilePrefix ?? null, opt: opts.optimizedModelPath ?? null,
  });
  let session = sessions.get(key);
  if (!session) {
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: level,
      executionMode: 'sequential',
      ...(opts.memPattern === false ? { enableMemPattern: false } : {}),
      ...(opts.profilePrefix ? { enableProfiling: true, profileFilePrefix: opts.profilePrefix } : {}),
      ...(opts.optimizedModelPath ? { optimizedModelFilePath: opts.optimizedModelPath } : {}),
      extra: {
        session: {
          ...(opts.disablePrepacking ? { disable_prepacking: '1' } : {}),
          ...(opts.spinning !== undefined ? { 'intra_op.allow_spinning': opts.spinning ? '1' : '0' } : {}),
          ...(exported.externalRoot ? { model_external_initializers_file_folder_path: exported.externalRoot } : {}),
          // Weights of the written model go to a side file (a 2 GiB protobuf cannot hold a UNet).
          ...(opts.optimizedModelPath ? { optimized_model_external_initializers_file_name: `${basename(opts.optimizedModelPath)}.data` } : {}),
        },
      },
    };
    const created = ort.InferenceSession.create(exported.bytes, sessionOptions);
    sessions.set(key, created);
    created.catch(() => sessions.delete(key));
    session = created;
  }
  // Fed weights are bound here, per compiled graph, never stored with the shared session.
  return new CompiledGraph(await session, exported.inputs, exported.outputNames, exported.weightFeeds);
}

/** Drops cached sessions (e.g. between benchmark cases). */
export function clearSessionCache(): void {
  sessions.clear();
}
