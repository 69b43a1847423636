# train_detector: the learned detector of a run (locate.method learned only):
# results/{run}/detector/weights.npz, trained on simulated images. Its params
# are exactly the training settings, so it is made again only when one of
# them changes; the movie is read for its dimensionality only (ancient: a
# re-acquired movie does not re-train).


rule train_detector:
    input:
        movie=ancient(run_path("movie.ome.zarr")),
    output:
        weights=run_path("detector/weights.npz"),
        provenance=run_path("detector/provenance.json"),
    log:
        log_path("train_detector"),
    threads: config["compute"]["threads"]
    resources:
        **stage_resources("train_detector"),
    params:
        settings=detector_params,
        version=VERSION,
    script:
        "../scripts/train_detector.py"
