// Messages between the server and its engine process (training and generation run there,
// off the HTTP thread: ONNX Runtime's run() blocks the thread it runs on).

/** Training options as the library takes them, less what cannot cross a process boundary. */
export interface TrainRequest {
  type: 'train';
  job: string;
  modelPath: string;
  threads?: number;
  /** TextualInversionOptions: images are file paths, `out` the job's run folder. */
  options: Record<string, unknown> & { images: string[]; out: string; resume?: string };
}

export interface GenerateRequest {
  type: 'generate';
  id: string;
  modelPath: string;
  modelName: string;
  threads?: number;
  /** GenerateOptions without callbacks. */
  options: Record<string, unknown> & { prompt: string };
  /** Embedding files with the word each is written as in prompts. */
  embeddings: Array<{ file: string; token: string }>;
  /** Folder for the PNGs (A1111 infotext inside). */
  outDir: string;
}

export type ToEngine = TrainRequest | { type: 'stop'; job: string } | GenerateRequest;

export type FromEngine =
  | { type: 'step'; job: string; step: number; loss: number; running: number; lr: number; seconds: number }
  | { type: 'preview'; job: string; step: number; file: string }
  | { type: 'checkpoint'; job: string; step: number; files: string[] }
  | { type: 'trained'; job: string; stopped: boolean; step: number }
  | { type: 'train-failed'; job: string; message: string; usage: boolean }
  | { type: 'generate-progress'; id: string; image: number; step: number; steps: number }
  | { type: 'generated'; id: string; images: Array<{ file: string; seed: number; infotext: string }> }
  | { type: 'generate-failed'; id: string; message: string; usage: boolean };
