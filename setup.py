import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements():
    with open(os.path.join(HERE, "requirements.txt")) as file:
        lines = (line.split("#", 1)[0].strip() for line in file)
        return [line for line in lines if line]


def read_readme():
    with open(os.path.join(HERE, "README.md")) as file:
        return file.read()


setuptools.setup(
    name="pushi",
    version="1.0.0.dev0",
    description="Self-hosted real-time push server speaking the Pusher protocol",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    license="Apache License, Version 2.0",
    package_dir={"": "src"},
    packages=setuptools.find_packages("src"),
    package_data={"pushi.app": ["static/*", "static/*/*"]},
    python_requires=">=3.11",
    install_requires=read_requirements(),
    entry_points={"console_scripts": ["pushi = pushi.cli:main"]},
)
