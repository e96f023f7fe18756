"""Entry script of the review app (`histoxai app` runs it with Streamlit): sign-in first, then the pages."""

import streamlit as st

from histoxai.app import auth, controls
from histoxai.app.settings import from_env
from histoxai.errors import InputError

# script, title, icon, URL path
PAGES = (("page_main.py", "Main", ":material/home:", "main"),
         ("page_single_target.py", "Single Target", ":material/grid_view:", "single-target"),
         ("page_multiple_targets.py", "Multiple Targets", ":material/view_column:", "multiple-targets"),
         ("page_multiple_methods.py", "Multiple Methods", ":material/compare:", "multiple-methods"),
         ("page_sample_maps.py", "Sample Maps", ":material/map:", "sample-maps"),
         ("page_drivers.py", "What drives the prediction", ":material/psychology:", "drivers"))


def main() -> None:
    st.set_page_config(page_title="histoxai review", page_icon=":material/biotech:", layout="wide")
    try:
        config = from_env()
    except InputError as err:
        st.error(f"The app is not configured: {err}")
        st.stop()
    user = auth.current_user(config)
    pages = [st.Page(path, title=title, icon=icon, url_path=url, default=i == 0)
             for i, (path, title, icon, url) in enumerate(PAGES)]
    # navigation first, so that the page asked for in the URL is still chosen after signing in; its
    # menu stays hidden and no page runs until then
    page = st.navigation(pages, position="sidebar" if user else "hidden")
    if user is None:
        auth.sign_in_form(config)  # stops the script
    controls.remember_widgets()
    auth.sign_out_button(config)
    try:
        page.run()
    except InputError as err:  # e.g. a file outside the root, or one that is not what it should be
        st.error(" ".join(str(err).split()))
    except OSError as err:
        st.error(f"{err.filename or 'a file of the run'}: could not be read ({err.strerror or err})")


if __name__ == "__main__":
    main()
