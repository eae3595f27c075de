"""Transcriptions of upstream's own code (coder-qicao/DreamPRM-1.5) that several tests compare with."""


def upstream_select(scores):
    """The selection loop of upstream's utils.select_best_answer: max_score = 0; for each
    candidate in order, ``if score >= max_score`` it becomes the best."""
    max_score, best_index = 0, 0
    for index, score in enumerate(scores):
        if score >= max_score:
            max_score, best_index = score, index
    return best_index
