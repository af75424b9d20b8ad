// Neutral caption templates (the CLIP ImageNet templates the textual-inversion paper and
// diffusers' script use): objects are named as things, styles as "in the style of".
export const OBJECT_TEMPLATES = [
  'a photo of a {}',
  'a rendering of a {}',
  'a cropped photo of the {}',
  'the photo of a {}',
  'a photo of a clean {}',
  'a photo of a dirty {}',
  'a dark photo of the {}',
  'a photo of my {}',
  'a photo of the cool {}',
  'a close-up photo of a {}',
  'a bright photo of the {}',
  'a cropped photo of a {}',
  'a photo of the {}',
  'a good photo of the {}',
  'a photo of one {}',
  'a close-up photo of the {}',
  'a rendition of the {}',
  'a photo of the clean {}',
  'a rendition of a {}',
  'a photo of a nice {}',
  'a good photo of a {}',
  'a photo of the nice {}',
  'a photo of the small {}',
  'a photo of the weird {}',
  'a photo of the large {}',
  'a photo of a cool {}',
  'a photo of a small {}',
] as const;

export const STYLE_TEMPLATES = [
  'a painting in the style of {}',
  'a rendering in the style of {}',
  'a cropped painting in the style of {}',
  'the painting in the style of {}',
  'a clean painting in the style of {}',
  'a dirty painting in the style of {}',
  'a dark painting in the style of {}',
  'a picture in the style of {}',
  'a cool painting in the style of {}',
  'a close-up painting in the style of {}',
  'a bright painting in the style of {}',
  'a cropped painting in the style of {}',
  'a good painting in the style of {}',
  'a close-up painting in the style of {}',
  'a rendition in the style of {}',
  'a nice painting in the style of {}',
  'a small painting in the style of {}',
  'a weird painting in the style of {}',
  'a large painting in the style of {}',
] as const;

export type ConceptKind = 'object' | 'style';

export function templatesFor(kind: ConceptKind): readonly string[] {
  return kind === 'style' ? STYLE_TEMPLATES : OBJECT_TEMPLATES;
}

/**
 * Reads an AUTOMATIC1111 prompt-template file: one caption per line, `[name]` (or `{}`)
 * where the learned word goes and optionally `[filewords]` for the image's own caption
 * (its `.txt` file). Empty lines and `#` comments are skipped.
 */
export function readTemplateFile(path: string, text: string): string[] {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  if (lines.length === 0) throw new Error(`${path}: no templates (one caption per line, with [name] where the word goes)`);
  for (const [i, l] of lines.entries()) {
    if (!l.includes('[name]') && !l.includes('{}')) throw new Error(`${path}: template "${l}" (line ${i + 1}) has no [name] for the learned word`);
  }
  return lines;
}

/**
 * One training caption: the word in place of `[name]`/`{}`, the image's caption in place of
 * `[filewords]` (dangling commas and doubled spaces left by an empty caption are removed).
 */
export function fillTrainingTemplate(template: string, word: string, filewords = ''): string {
  return template
    .replaceAll('[name]', word)
    .replace('{}', word)
    .replaceAll('[filewords]', filewords.trim())
    .replace(/\s*,\s*(,\s*)+/g, ', ')
    .replace(/\s+/g, ' ')
    .replace(/^[\s,]+|[\s,]+$/g, '');
}
