"""`slimkit.compress(...)`: one call from a trained model to a measured-faster one within a quality floor.

    import slimkit
    result = slimkit.compress(model, train, val, test, task=classification(), target="latency=0.5x", floor="-1pt",
                      out="runs/compressed")

See run.py for the steps, settings.py for targets and floors, search.py for the depth+width mixes,
recovery.py for the losses and the teacher,
cutters.py for how models are cut and timed, result.py for the typed report, report.py for what is
written.
"""

from slimkit.compression.cutters import (
    Cutter,
    EncoderCutter,
    StructuredCutter,
    deciding_timer,
)
from slimkit.compression.deploy import ExportFailedError
from slimkit.compression.rebuild import Rebuild, plan_rebuild, save_compressed
from slimkit.compression.report import to_markdown, write_result
from slimkit.compression.result import CompressReport, CompressResult, RefusedError
from slimkit.compression.run import NotFasterError, compress, recover_chosen
from slimkit.compression.search import Candidate
from slimkit.compression.settings import (
    CompressSettings,
    Floor,
    Target,
    parse_floor,
    parse_target,
)

__all__ = ["Candidate", "CompressReport", "CompressResult", "CompressSettings", "Cutter", "EncoderCutter", "ExportFailedError", "Floor",
           "NotFasterError", "Rebuild", "RefusedError", "StructuredCutter", "Target", "compress", "deciding_timer", "parse_floor", "parse_target", "plan_rebuild",
           "recover_chosen", "save_compressed", "to_markdown", "write_result"]
