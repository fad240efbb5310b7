"""Names with fixed meanings, each defined once: the default routes, BN modes while attacking, AutoAttack's versions
and attacks, and the two evaluation protocols. (Threat models live in :mod:`robust_sabn.threat`.)"""

# The routes of a dual-path model unless configured otherwise: clean inputs take the first, attacked ones the second.
DEFAULT_ROUTES = ("clean", "adv")
CLEAN_ROUTE, ADV_ROUTE = DEFAULT_ROUTES

# Batch-norm mode while crafting an attack: "eval" (running statistics; the usual choice) or "train" (batch
# statistics, running statistics updated; the official SaBN code's choice).
BN_MODES = ("eval", "train")

# AutoAttack (Croce and Hein 2020): its versions and the attacks a "custom" version may list.
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")

# The evaluation protocols of a routed model, and what each means.
SINGLE_ROUTE = "single route"
ORACLE_ROUTING = "oracle routing"
PROTOCOLS = {
    SINGLE_ROUTE: "one deterministic model; what RobustBench accepts",
    ORACLE_ROUTING: "clean inputs on the clean route, attacks on the adv route; as the SaBN paper reports",
}
