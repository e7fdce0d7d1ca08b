"""The maths: gradient descent in PyTorch, its stop rules, conditioning and evaluation."""
