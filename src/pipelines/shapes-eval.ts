// The paper's two evaluation axes, measured in the shapes world by the analyzer:
// reconstruction (does the image show the concept: shape, colour, texture?) and
// editability (does it also obey the rest of the prompt: position, size, background?),
// for three ways of naming the concept: the learned word, the init word alone, and the
// best description words allow (the texture has no word).
import type { Attrs } from '../shapes/attributes.ts';
import { analyze } from '../shapes/analyze.ts';
import type { RgbImage } from '../shapes/render.ts';
import { generate, type GeneratedImage } from './generate.ts';
import type { StableDiffusion } from './stable-diffusion.ts';

export type Concept = Pick<Attrs, 'shape' | 'color' | 'texture'>;

export interface EvalPrompt {
  /** `{}` stands for the concept's name. */
  template: string;
  /** What the rest of the prompt asks for. */
  constraints: Partial<Pick<Attrs, 'size' | 'position' | 'background'>>;
}

export const DEFAULT_EVAL_PROMPTS: EvalPrompt[] = [
  { template: 'a photo of a {}', constraints: {} },
  { template: 'a {} at the bottom right', constraints: { position: 'bottom-right' } },
  { template: 'a large {} on a black background', constraints: { size: 'large', background: 'black' } },
  { template: 'a small {} at the top left', constraints: { size: 'small', position: 'top-left' } },
  { template: 'a {} in the center on a gray background', constraints: { position: 'center', background: 'gray' } },
  { template: 'a large {} at the top right on a beige background', constraints: { size: 'large', position: 'top-right', background: 'beige' } },
];

/**
 * Guidance for the shapes model: at SD's usual 7.5 its zero-terminal-SNR sampling
 * over-saturates colours (red drifts to brown), which the analyzer then misreads.
 */
export const SHAPES_GUIDANCE = 5;

export type NamingMethod = 'learned' | 'init_word' | 'description';

/** The prompt text for a template and a name, with "a"/"an" fixed for the word that follows. */
export function fillTemplate(template: string, name: string): string {
  return template.replace('{}', name).replace(/\ba (?=[aeiou])/gi, 'an ');
}

/** The names each method puts into the templates. */
export function conceptNames(concept: Concept, learnedToken: string): Record<NamingMethod, string> {
  return { learned: learnedToken, init_word: concept.shape, description: `${concept.color} ${concept.shape}` };
}

export interface ImageVerdict {
  prompt: string;
  seed: number;
  attrs: Attrs;
  reconstructs: boolean;
  obeys: boolean;
}

export interface MethodScore {
  /** Fraction of images showing the concept's shape, colour and texture. */
  reconstruction: number;
  /** Of the images whose prompt asks for a position/size/background: the fraction that show the concept AND obey. */
  editability: number;
  /** Of those images: the fraction obeying the prompt, concept or not. */
  obeys: number;
  images: number;
}

export function toRgbImage(img: GeneratedImage): RgbImage {
  const { width: w, height: h, pixels } = img;
  const data = new Uint8Array(w * h * 3);
  for (let c = 0; c < 3; c++) for (let i = 0; i < w * h; i++) data[i * 3 + c] = Math.round(Math.min(1, Math.max(0, pixels[c * w * h + i])) * 255);
  return { width: w, height: h, data };
}

export function judge(attrs: Attrs, concept: Concept, constraints: EvalPrompt['constraints']): { reconstructs: boolean; obeys: boolean } {
  const reconstructs = attrs.shape === concept.shape && attrs.color === concept.color && attrs.texture === concept.texture;
  const obeys = Object.entries(constraints).every(([k, v]) => attrs[k as keyof Attrs] === v);
  return { reconstructs, obeys };
}

export function score(verdicts: Array<ImageVerdict & { constrained: boolean }>): MethodScore {
  const n = verdicts.length;
  const constrained = verdicts.filter((v) => v.constrained);
  const frac = (xs: unknown[], of: number) => (of ? xs.length / of : 0);
  return {
    reconstruction: frac(verdicts.filter((v) => v.reconstructs), n),
    editability: frac(constrained.filter((v) => v.obeys && v.reconstructs), constrained.length),
    obeys: frac(constrained.filter((v) => v.obeys), constrained.length),
    images: n,
  };
}

export interface EvalOptions {
  prompts?: EvalPrompt[];
  /** Images per prompt. */
  count?: number;
  steps?: number;
  guidance?: number;
  seed?: number;
  sampler?: string;
  methods?: NamingMethod[];
  onImage?: (method: NamingMethod, prompt: string, image: GeneratedImage, verdict: ImageVerdict) => void;
}

/** Generates every prompt with every naming method and scores the images. */
export async function evaluateConcept(sd: StableDiffusion, concept: Concept, learnedToken: string, o: EvalOptions = {}): Promise<Record<NamingMethod, MethodScore>> {
  const prompts = o.prompts ?? DEFAULT_EVAL_PROMPTS;
  const names = conceptNames(concept, learnedToken);
  const methods = o.methods ?? (['learned', 'init_word', 'description'] as NamingMethod[]);
  const out = {} as Record<NamingMethod, MethodScore>;
  for (const method of methods) {
    const verdicts: Array<ImageVerdict & { constrained: boolean }> = [];
    for (const [pi, p] of prompts.entries()) {
      const prompt = fillTemplate(p.template, names[method]);
      // The same seeds for every method, so the methods differ only in the words.
      const images = await generate(sd, { prompt, count: o.count ?? 4, steps: o.steps ?? 25, guidance: o.guidance ?? SHAPES_GUIDANCE, seed: (o.seed ?? 1000) + pi * 100, sampler: o.sampler });
      for (const img of images) {
        const a = analyze(toRgbImage(img)).attrs;
        const v = { prompt, seed: img.seed, attrs: a, ...judge(a, concept, p.constraints) };
        verdicts.push({ ...v, constrained: Object.keys(p.constraints).length > 0 });
        o.onImage?.(method, prompt, img, v);
      }
    }
    out[method] = score(verdicts);
  }
  return out;
}
