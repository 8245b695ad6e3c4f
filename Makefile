# The two commands README.md gives: `make demo` and `make test`. Each creates .venv/ when it is missing,
# installs the project into it (editable, versions pinned by constraints.txt), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -c constraints.txt -e '.[test,crf]'  # test pulls the cityscapes, tfds and tflite extras
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m deeplab_tf.bin.demo --train_flagfile=experiments/demo_nuclei.flags

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) demo_output
