"""docs/architectures.md lists exactly the architectures the conformance suite checks."""

from tests.conformance.models import DOC, markdown


def test_the_document_is_generated_from_the_suite():
    # Regenerate with `python -m tests.conformance.models` after changing ARCHITECTURES.
    assert DOC.read_text(encoding="utf-8") == markdown()
