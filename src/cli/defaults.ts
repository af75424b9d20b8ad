// Defaults shared by the commands.
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The bundled shapes model (trained by oneword itself; see models/shapes/TRAINING.md). */
export const DEFAULT_MODEL = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'models', 'shapes');

/** A model's display name for infotext: the folder or file name. */
export function modelName(path: string): string {
  return basename(path.replace(/[/\\]+$/, '')).replace(/\.safetensors$/, '');
}
