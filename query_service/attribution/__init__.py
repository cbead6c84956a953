"""Attribution: the engine (reads gradients from the store), the pure scoring maths,
KNN-Shapley and raw-feature gradients."""
