// The exact weights (diffusers names → shapes) each architecture needs for a config.
// One source of truth lives with the checkpoint loader, which validates files against it.
export {
  unetTensorShapes as unetWeightSpec,
  vaeTensorShapes as vaeWeightSpec,
  clipTextTensorShapes as clipTextWeightSpec,
} from '../io/checkpoint.ts';
export type WeightSpec = Map<string, number[]>;
