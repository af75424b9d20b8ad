// The shapes world: a procedurally generated image domain for demonstrating textual inversion.
export * from './attributes.ts';
export * from './random.ts';
export * from './render.ts';
export * from './caption.ts';
export * from './analyze.ts';
export * from './degrade.ts';
export * from './png.ts';
