"""Online evaluation (chapter 08): what users do with what the service shows them.

    assignment     assign(user_id, experiment): deterministic variants by hashing the id with a salt
    ab             two_proportion_test, sample_size, srm_test; per-user CTR; A/A and peeking simulations
    interleaving   team_draft_interleave, interleaving_winner, credits, the sign test over many queries
    users          click models with known truth (position-based, cascade) and simulated users who
                   search the real service and post their clicks through it
    logs           CTR, clicks per query, click rate, MRR of the first click, read from the service's logs
    position_bias  examination propensities from swap interventions or EM; inverse-propensity weights
    experiment     Experiment: A/B arms, interleaving or RandPair swaps on one service, logged per impression
    power          queries to 80% power for A/B and interleaving, analytic and simulated from logged outcomes
    study          chapter 08's experiments step by step (shared by the notebook and ``bench online``)
    plots          chapter 08's figures

The statistics are written by hand, because they are the lesson, and tested against
statsmodels and scipy; the simulated users drive the real service, so every logged
row is genuine service output.
"""

from visual_search.errors import OnlineError
from visual_search.online.ab import (
    aggregate_ctr,
    compare_ctr,
    sample_size,
    simulate_aa_tests,
    simulate_peeking,
    srm_test,
    two_proportion_test,
)
from visual_search.online.assignment import assign, bucket
from visual_search.online.experiment import Experiment
from visual_search.online.interleaving import (
    aggregate_interleaving,
    interleaving_credits,
    interleaving_winner,
    sign_test_p_value,
    team_draft_interleave,
)
from visual_search.online.logs import interleaving_outcomes, log_metrics, read_impressions, swap_rows
from visual_search.online.position_bias import estimate_theta_em, estimate_theta_swap, ips_weights, naive_theta
from visual_search.online.power import (
    ab_mean_queries_for_power,
    ab_queries_for_power,
    interleaving_queries_for_power,
    queries_to_power,
)
from visual_search.online.users import CascadeModel, PositionBasedModel, UserPopulation, run_simulated_users, simulate_clicks

__all__ = [
    "CascadeModel", "Experiment", "OnlineError", "PositionBasedModel", "UserPopulation", "ab_mean_queries_for_power",
    "ab_queries_for_power", "aggregate_ctr", "aggregate_interleaving", "assign", "bucket", "compare_ctr",
    "estimate_theta_em", "estimate_theta_swap", "interleaving_credits", "interleaving_outcomes",
    "interleaving_queries_for_power", "interleaving_winner", "ips_weights", "log_metrics", "naive_theta",
    "queries_to_power", "read_impressions", "run_simulated_users", "sample_size", "sign_test_p_value",
    "simulate_aa_tests", "simulate_clicks", "simulate_peeking", "srm_test", "swap_rows", "team_draft_interleave",
    "two_proportion_test",
]
