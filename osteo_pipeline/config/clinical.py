"""Settings of clinical manifests: how T-scores become labels, which rows may be used, and where
the key that pseudonymises patient IDs comes from."""

from __future__ import annotations

from pydantic import Field, model_validator

from osteo_pipeline.config.base import Section


class ClinicalSettings(Section):
    normal_min_t_score: float = -1.0
    """WHO: a T-score at or above this is normal bone density."""
    osteoporosis_max_t_score: float = -2.5
    """WHO: a T-score at or below this is osteoporosis; between the two, osteopenia."""
    plausible_t_score: tuple[float, float] = (-6.0, 4.0)
    """T-scores outside this range are taken for typing errors (e.g. 12 for -1.2)."""
    max_days_xray_to_dxa: int | None = Field(default=None, ge=0)
    """Rows whose X-ray and density exam (``study_date``, ``dxa_date``) lie further apart are left
    out, with the reason; null: no limit."""
    allowed_views: list[str] | None = None
    """Views a row may have (e.g. [AP, PA] for frontal films only); null: any view."""
    age_bands: list[int] = [50, 65, 80]
    """Edges of the age bands evaluation reports results by (years)."""
    patient_key_env: str = "OSTEO_PATIENT_KEY"
    """Environment variable holding the key of the keyed hash that stands in for patient IDs
    (never logged); a clinical manifest needs it, the same for every run."""

    @model_validator(mode="after")
    def _ordered_cutoffs(self) -> ClinicalSettings:
        if self.osteoporosis_max_t_score >= self.normal_min_t_score:
            raise ValueError(
                "clinical.osteoporosis_max_t_score must be below clinical.normal_min_t_score"
            )
        low, high = self.plausible_t_score
        if low >= high:
            raise ValueError("clinical.plausible_t_score must be [low, high] with low < high")
        return self
