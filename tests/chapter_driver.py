"""Run one chapter as a script, then report facts from its namespace as JSON.

Usage: ``python chapter_driver.py CHAPTER.py EXPR [EXPR ...]``. The chapter's own
output comes first; the last line is ``FACTS:`` followed by a JSON list holding
the value of each expression evaluated in the chapter's namespace.
"""

import json
import runpy
import sys

chapter, *expressions = sys.argv[1:]
namespace = runpy.run_path(chapter, run_name="__main__")
facts = [eval(expression, namespace) for expression in expressions]
print("FACTS:" + json.dumps(facts))
