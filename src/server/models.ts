// The models a server offers: the bundled shapes model plus every diffusers folder and
// single-file checkpoint under --models. Clients name a model by its id only, so no
// request can point the server at a path of its choosing.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { StableDiffusion } from '../index.ts';
import { DEFAULT_MODEL } from '../cli/defaults.ts';
import { defaultSampler, defaultSize } from '../pipelines/generate.ts';

export interface ModelInfo {
  /** "shapes" for the bundled model, else the path relative to --models with / separators. */
  id: string;
  name: string;
  path: string;
  layout: 'diffusers' | 'single-file';
  family: string;
  /** Native image size (training and generation default). */
  resolution: number;
  /** Default sampler (dpmpp2m for zero-terminal-SNR models). */
  sampler: string;
  /** Text encoder width: 768 (SD 1.x) or 1024 (SD 2.x); embeddings must match. */
  hidden_size: number;
  /** SDXL: text encoder 2's width (clip_g); absent for SD 1.x/2.x. */
  hidden_size_2?: number;
}

/** How deep under --models to look for models (folder/model, folder/sub/model). */
const MAX_DEPTH = 3;

function describe(id: string, name: string, path: string): ModelInfo {
  // Loading reads headers and configs only; nothing is compiled.
  const sd = StableDiffusion.load(path);
  return {
    id, name, path,
    layout: sd.ckpt.layout === 'single-file' ? 'single-file' : 'diffusers',
    family: sd.ckpt.family,
    resolution: defaultSize(sd),
    sampler: defaultSampler(sd),
    hidden_size: sd.hiddenSize,
    ...(sd.isXL ? { hidden_size_2: sd.hiddenSize2 } : {}),
  };
}

function* candidates(dir: string, depth: number): Generator<string> {
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch {
    return;
  }
  for (const n of names) {
    if (n.startsWith('.')) continue;
    const p = join(dir, n);
    let st;
    try { st = statSync(p); } catch { continue; }
    if (st.isFile() && n.endsWith('.safetensors')) yield p;
    else if (st.isDirectory()) {
      if (existsSync(join(p, 'model_index.json')) || existsSync(join(p, 'unet'))) yield p;
      else if (depth < MAX_DEPTH) yield* candidates(p, depth + 1);
    }
  }
}

export class ModelRegistry {
  private models = new Map<string, ModelInfo>();
  /** Why each file under --models that looked like a model is not offered (for the log). */
  readonly skipped = new Map<string, string>();

  constructor(private readonly modelsDir?: string) {
    this.scan();
  }

  /** Re-reads --models (a model copied in while the server runs appears without a restart). */
  scan(): ModelInfo[] {
    const found = new Map<string, ModelInfo>();
    found.set('shapes', this.models.get('shapes') ?? describe('shapes', 'shapes', DEFAULT_MODEL));
    if (this.modelsDir) {
      for (const p of candidates(this.modelsDir, 1)) {
        const id = relative(this.modelsDir, p).split(sep).join('/');
        const known = this.models.get(id);
        if (known) {
          found.set(id, known);
          continue;
        }
        try {
          found.set(id, describe(id, id.replace(/\.safetensors$/, ''), p));
          this.skipped.delete(p);
        } catch (e) {
          // Embeddings, VAEs, LoRAs and reference tensors share the extension: not models.
          this.skipped.set(p, (e as Error).message);
        }
      }
    }
    this.models = found;
    return this.list();
  }

  list(): ModelInfo[] {
    return [...this.models.values()];
  }

  get(id: unknown): ModelInfo | undefined {
    return typeof id === 'string' ? this.models.get(id) : undefined;
  }
}
