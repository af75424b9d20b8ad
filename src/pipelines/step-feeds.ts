// The text inputs of textual-inversion steps, batched: token ids for each tokenizer and, for
// SDXL, each sample's time ids. One class so the train batch, the fixed-loss probe and the
// evaluation batch assemble them alike.

/** A caption's token ids: tokenizer 1, and tokenizer 2 for SDXL (it pads with "!"). */
export interface PromptIds {
  ids: number[];
  ids2?: number[];
}

/** Every learned row of each text encoder (SDXL: `rows2` for text encoder 2). */
export interface RowFeeds {
  rows: Float32Array;
  rows2?: Float32Array;
}

export class TextFeeds {
  private readonly ids: number[] = [];
  private readonly ids2: number[] = [];
  private readonly timeIds: number[] = [];

  constructor(readonly xl: boolean) {}

  /** Adds one sample: its prompt ids and (SDXL) its 6 time ids. */
  add(p: PromptIds, timeIds: readonly number[]): this {
    this.ids.push(...p.ids);
    if (this.xl) {
      if (!p.ids2 || timeIds.length !== 6) throw new Error('an SDXL sample needs ids for both tokenizers and 6 time ids');
      this.ids2.push(...p.ids2);
      this.timeIds.push(...timeIds);
    }
    return this;
  }

  /** The samples of several feeds, in order. */
  static join(parts: readonly TextFeeds[]): TextFeeds {
    const out = new TextFeeds(parts[0]?.xl ?? false);
    for (const p of parts) {
      out.ids.push(...p.ids);
      out.ids2.push(...p.ids2);
      out.timeIds.push(...p.timeIds);
    }
    return out;
  }

  /** The TrainStep inputs: ids, and for SDXL ids2 and timeIds. */
  feeds(): { ids: number[]; ids2?: number[]; timeIds?: number[] } {
    return this.xl ? { ids: this.ids, ids2: this.ids2, timeIds: this.timeIds } : { ids: this.ids };
  }
}
