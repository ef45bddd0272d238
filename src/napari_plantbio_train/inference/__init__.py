"""Using a model on a stack: sliding windows, probabilities to labels, block-wise labelling of stacks of any size,
and the model's doubt."""
