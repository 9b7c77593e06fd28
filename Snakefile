"""dwisynth: DWI synthesis and evaluation workflow. See README.md."""

from snakemake.utils import min_version

min_version("9.0")

from dwisynth.workflow_scheduler import coalesce_scheduler_timers

coalesce_scheduler_timers()  # Snakemake 9's wake-up timers multiply with every finished job


# A config given with --configfile is the whole config, completed by the schema's defaults: the template is read
# only when none is given, so no value of it (or of the demo's file) reaches a study unasked.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/convert.smk"
include: "rules/preprocess.smk"
include: "rules/dataset.smk"
include: "rules/networks.smk"
include: "rules/jmmda.smk"
include: "rules/baselines.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
        model_targets,
        synthesis_targets,
        layout.METRICS,
        layout.LESION_ADC,
        layout.LESION_CONTRAST,
        layout.TRUTH_METRICS,
        layout.MONOTONICITY,
        layout.SUMMARY,
        layout.REPORT,
        ct2dwi_targets(),
        rules.resolved_config.output,
        rules.dataset_description.output,
    default_target: True


for _cohort in COHORTS:

    rule:
        name:
            f"cohort_{_cohort}"
        input:
            cohort_targets(_cohort),
