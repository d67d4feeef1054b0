"""Training DeiT: one module per part of the job, from the folder on disk to the command.

- `image_folder`: the folder's index (torchvision's class order), deit's repeated-augmentation
  sampler per process, the streaming tf.data reader (header checks, crop-window JPEG decode).
- `augmentation`, `rand_augment`: the recipe's image and batch ops (timm's, op for op).
- `recipe`: the recipes, their defaults, the learning-rate rule and schedule.
- `distillation`: `DeiTDistiller`, the teacher's losses.
- `fine_tuning`: a new input size, backbone transfer, DeiT's AdamW.
- `distribution`: Keras' own engines over devices and processes.
- `command`: `keras-deit train`, built on all of the above.

Nothing is imported here, so `keras_deit.training.recipe` stays free of Keras for the CLI.
"""
