"""The exact-gradient problems that both backends' unbiasedness tests solve.

Plain numbers only: ``tests/pyro`` and ``tests/numpyro`` build their models, guides
and exact gradients from these, so both backends are held to the same problems.
"""

# Bernoulli vector coupled through one likelihood term:
# z ~ Bern(σ(prior_logits)), x ~ N(tanh(Σ z·weights), scale), q(z) = Bern(σ(logits)).
BERNOULLI = {
    "weights": [1.0, -2.0, 0.5, 1.5],
    "obs": 0.7,
    "scale": 0.5,
    "prior_logits": [0.2, -0.4, 0.1, 0.3],
    "logits": [0.3, -0.2, 0.8, -1.0],
}

# Two categorical elements coupled through a product:
# y_i ~ Cat(prior), x ~ N(table[0][y_0]·table[1][y_1], 1), q(y) = Cat(softmax(logits)).
CATEGORICAL = {
    "prior": [0.1, 0.2, 0.3, 0.4],
    "table": [[0.0, 1.0, -1.0, 2.0], [0.5, -0.5, 1.5, 0.0]],
    "obs": 1.0,
    "logits": [[0.1, -0.3, 0.2, 0.0], [0.4, 0.0, -0.2, 0.1]],
}

# One count site z with guide q (trained parameters) and model prior p (fixed), in the
# torch parameterisations (NB mean r·p/(1−p), Geometric counts failures).
COUNT = {
    "poisson": {"family": "poisson", "guide": {"rate": 3.0}, "model": {"rate": 5.0}},
    "geometric": {"family": "geometric", "guide": {"probs": 0.3}, "model": {"probs": 0.2}},
    "binomial": {
        "family": "binomial",
        "guide": {"total_count": 10, "probs": 0.3},
        "model": {"total_count": 10, "probs": 0.6},
    },
    "negative-binomial-10": {
        "family": "negative-binomial",
        "guide": {"total_count": 4.0, "probs": 0.4},
        "model": {"total_count": 10.0, "probs": 0.2},
    },
    "negative-binomial-0.5": {
        "family": "negative-binomial",
        "guide": {"total_count": 1.0, "probs": 0.4},
        "model": {"total_count": 0.5, "probs": 0.2},
    },
    "gamma-poisson": {
        "family": "gamma-poisson",
        "guide": {"concentration": 2.0, "rate": 0.5},
        "model": {"concentration": 3.0, "rate": 1.0},
    },
    "zero-inflated-poisson": {
        "family": "zero-inflated-poisson",
        "guide": {"rate": 3.0, "gate": 0.3},
        "model": {"rate": 2.0, "gate": 0.0},
    },
}

# One continuous site: KL(q || target) in closed form.
CONTINUOUS = {
    "gamma": {"family": "gamma", "guide": [2.0, 1.0], "target": [1.0, 0.5]},
    "gamma-small-shape": {"family": "gamma", "guide": [0.3, 1.0], "target": [0.01, 0.5]},
    "cdf-normal": {"family": "cdf-normal", "guide": [0.0, 1.0], "target": [1.0, 2.0]},
}

# Local Bernoulli latents in a (possibly subsampled) data plate with a model parameter:
# z_n ~ Bern(prior), x_n ~ N(Σ z_n·weights, scale), q(z_n) = Bern(σ(logits_n)).
PLATED = {
    "data": [0.3, 1.8, -0.4, 2.5, 1.1, 0.0],
    "prior": [0.3, 0.6],
    "weights": [1.0, 1.5],
    "scale": 0.7,
    "logits": [[-1.0 + 2.0 * (2 * n + j) / 11 for j in range(2)] for n in range(6)],
}

# Theorem 3: λ ~ Gamma(2, 1), n ~ Poisson(λ), x ~ Poisson(n + 0.5) observed at 3;
# q(λ) = Gamma(a, b), q(n | λ) = Poisson(c·λ).
HIERARCHICAL = {"obs": 3.0, "a": 2.0, "b": 1.5, "c": 1.2}

# A fixed problem on which both backends must return the same gradient for the same
# latent values (the cross-backend test).
CROSS_BACKEND = {
    "bernoulli_sample": [1.0, 0.0, 0.0, 1.0],
    "count_sample": 4.0,
}

# Discrete guide sites with continuous guide children (score-function fallback).
# M2 shape: y ~ OneHot(uniform 3), z ~ N(0, I_2), x ~ N(y·W + z, I_2);
# q(y) = OneHot(softmax(logits)), q(z | y) = N(y·B, diag(exp(log_scale))).
M2 = {
    "weights": [[1.0, -0.5], [-1.0, 0.5], [0.5, 1.5]],
    "obs": 3.0,
    "logits": [0.2, -0.1, 0.3],
    "locs": [[0.3, -0.2], [-0.4, 0.1], [0.2, 0.5]],
    "log_scale": -0.5,
}
# Bernoulli -> Normal -> Bernoulli: y ~ Bern(1/2), z ~ N(y, 1), w ~ Bern(σ(z)),
# x ~ N(y + 2w + z/2, 1); q(y) = Bern(σ(a)), q(z | y) = N(b0 + b1·y, exp(s)),
# q(w | z) = Bern(σ(c·z)).
CHAIN = {"obs": 1.5, "a": 0.3, "b0": -0.2, "b1": 0.8, "s": -0.4, "c": 1.2}
# AIR-like: up to 3 steps; object t is present with prior 1/2 if all before it are;
# present objects have where_t, what_t ~ N(0, 1); x ~ N(Σ present (where_t + what_t), 1).
# q: present_t ~ Bern(σ(logits[t])) while all before are present, where_t ~
# N(where[t], exp(log_scale)), what_t ~ N(what[t], exp(log_scale)).
AIR = {
    "obs": 3.0,
    "logits": [0.5, 0.1, -0.5],
    "where": [0.2, -0.1, 0.3],
    "what": [0.4, 0.1, -0.2],
    "log_scale": -0.5,
}
# Branching on a latent: z ~ Bern(1/2) (3 elements), x_i ~ N(loc + z_i, 1) with
# loc = 2 if z_0 else -1 (decided in Python); q(z) = Bern(σ(logits)).
BRANCH = {"obs": [1.0, 0.5, 2.0], "logits": [0.2, -0.3, 0.4]}
# A count that sets how many sites follow: n ~ Poisson(2), z_i ~ Bern(0.3) for i < n,
# x ~ N(Σ z_i, 1); q(n) = Poisson(rate), q(z_i) = Bern(σ(l0 + l1·i)).
COUNT_SITES = {"obs": 2.0, "prior_rate": 2.0, "rate": 0.8, "l0": 0.2, "l1": -0.3}

# A discrete internal site in a subsampled plate (the score-function fallback):
# z_n ~ Bern(prior), z2_n ~ Bern(0.3 + 0.4 z_n), x_n ~ N(z_n + 2 z2_n, 1) observed;
# q(z_n) = Bern(σ(logits_n)), q(z2_n | z_n) = Bern(σ(child_logits[z_n])).  A subsample of
# ``subsample_size`` of the ``len(data)`` points scales the costs by N/B, once.
SUBSAMPLED_CHAIN = {
    "data": [0.3, 1.8, -0.4, 2.5, 1.1, 0.0],
    "prior": 0.4,
    "logits": [-1.0, -0.6, -0.2, 0.2, 0.6, 1.0],
    "child_logits": [-0.5, 0.8],
    "subsample_size": 3,
}
