"""Tags against the truth: micro-averaged precision and recall of predicted tag sets (e.g. `tag`'s output on
demo images, whose generator knows what it drew)."""
from dataclasses import dataclass


@dataclass
class TagAccuracy:
    images: int            # images with both a prediction and a truth
    predicted: int         # tags predicted on them
    true: int              # true tags on them
    correct: int           # predicted tags that are true

    @property
    def precision(self):
        return self.correct / self.predicted if self.predicted else 0.0

    @property
    def recall(self):
        return self.correct / self.true if self.true else 0.0

    def line(self):
        return (f"images {self.images}: precision {100 * self.precision:.1f}% ({self.correct}/{self.predicted}), "
                f"recall {100 * self.recall:.1f}% ({self.correct}/{self.true}), "
                f"{self.predicted / max(self.images, 1):.2f} tags per image predicted, "
                f"{self.true / max(self.images, 1):.2f} true")


def tag_accuracy(predicted, truth):
    """predicted, truth: {image_id: [tags]}; images in both count (a missing prediction is not scored)."""
    ids = [i for i in predicted if i in truth]
    sets = [(set(predicted[i]), set(truth[i])) for i in ids]
    return TagAccuracy(images=len(ids), predicted=sum(len(p) for p, _ in sets), true=sum(len(t) for _, t in sets),
                       correct=sum(len(p & t) for p, t in sets))
