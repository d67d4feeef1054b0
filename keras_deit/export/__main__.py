"""`python -m keras_deit.export --worker REQUEST RESPONSE`: the export child process."""

from keras_deit.export.worker import main

main()
