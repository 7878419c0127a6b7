"""Data curation: quality filters, fuzzy and image dedup, CLIP-score filtering, mixtures.

`chimera curate --config configs/curation/shapes.yaml --in 'shards/train-*.tar' --out DST`
runs a configured chain (see `data.curation.curate`); the pieces are usable on their own:

    text_quality   GopherQuality, CaptionQuality and the single rules
    c4             C4Quality: C4's line and page rules (Raffel et al. 2020)
    minhash        MinHasher, MinHashDeduper, bands_rows_for_recall, optimal_bands_rows, connected_components
    image_dedup    phash, PHashDeduper, semdedup, embed_images
    clip_score     clip_scores, select_by_score, build_model (incl. a `clip` stage checkpoint)
    mixtures       MixtureStream, mixture_probabilities, MixtureImageTextDataModule
    noise          inject_noise (known noise for Shapes), step_precision_recall
    conversations  shards_to_llava: kept pairs -> LLaVA caption conversations for training
"""

from data.curation.c4 import C4Quality
from data.curation.clip_score import clip_scores, select_by_score
from data.curation.curate import curate
from data.curation.image_dedup import PHashDeduper, phash, semdedup
from data.curation.minhash import MinHashDeduper, MinHasher, bands_rows_for_recall, optimal_bands_rows
from data.curation.mixtures import MixtureStream, mixture_probabilities
from data.curation.text_quality import CaptionQuality, GopherQuality

__all__ = ["C4Quality", "CaptionQuality", "GopherQuality", "MinHashDeduper", "MinHasher", "MixtureStream",
           "PHashDeduper", "bands_rows_for_recall", "clip_scores", "curate", "mixture_probabilities",
           "optimal_bands_rows", "phash", "select_by_score", "semdedup"]
