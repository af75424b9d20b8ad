// The graph layer's public surface.
export * from './tensor.ts';
export * from './ops.ts';
export * from './composite.ts';
export { grad, valueAndGrad, unbroadcast } from './autodiff.ts';
export { evaluate } from './evaluate.ts';
export { exportOnnx, OPSET, type WeightMode, type ExportOptions } from './onnx.ts';
